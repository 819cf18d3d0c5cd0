"""Pure functions: image decoding for odd inputs, batch padding sizes, registry, GPU discovery."""

from __future__ import annotations

import io
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from imageclf.launch.start_workers import gpu_ids, worker_commands
from imageclf.models.images import ImageDecodeError, decode_to_pixels
from imageclf.models.registry import MODELS, get_spec


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(data: bytes, size: int = 8) -> np.ndarray:
    return np.frombuffer(decode_to_pixels(data, size, 10**8), np.uint8).reshape(size, size, 3)


def test_output_is_size_x_size_rgb_bytes():
    assert len(decode_to_pixels(encode(Image.new("RGB", (640, 480), "red"), "JPEG"), 224, 10**8)) == 224 * 224 * 3


def test_transparent_pixels_become_white_not_black():
    out = pixels(encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"))
    assert (out == 255).all()


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    out = pixels(encode(Image.fromarray(ramp), "PNG"), 64)
    assert out[:, 0].max() < 10 and out[:, -1].min() > 245
    assert 100 < out[:, 32].mean() < 160  # the middle of the ramp stays grey, not white


def test_palette_and_cmyk_and_grey_become_rgb():
    for img in (Image.new("P", (9, 9), 3), Image.new("CMYK", (9, 9), (0, 255, 255, 0)), Image.new("L", (9, 9), 77)):
        fmt = "JPEG" if img.mode == "CMYK" else "PNG"
        assert pixels(encode(img, fmt)).shape == (8, 8, 3)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), "black")
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display: the white half goes to the top
    out = pixels(encode(img, "PNG", exif=exif), 20)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ("blue", "yellow")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = pixels(data)
    assert out[..., 2].mean() > 200 and out[..., 0].mean() < 50


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "corrupt"), (b"GIF89a not really", "corrupt"), (b"plain text", "unsupported"),
     (encode(Image.new("RGB", (64, 64)), "JPEG")[:200], "corrupt")],
)
def test_undecodable_inputs_raise_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_to_pixels(data, 8, 10**8)
    assert info.value.reason == reason


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(ImageDecodeError) as info:
        decode_to_pixels(encode(Image.new("L", (300, 300)), "PNG"), 8, max_pixels=300 * 299)
    assert info.value.reason == "too_large"


def test_batch_buckets_cover_every_size_with_little_padding():
    from imageclf.models.keras_model import batch_buckets

    assert batch_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert batch_buckets(1) == [1]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    for n in range(1, 65):
        padded = min(b for b in batch_buckets(64) if b >= n)
        assert padded - n < max(8, n)


def test_unpadded_classifier_runs_batches_as_they_are_and_padded_one_rounds_up():
    from imageclf.models.keras_model import Classifier

    calls = []

    def infer(x):
        calls.append(len(x))
        return np.tile(np.arange(4, dtype=np.float32), (len(x), 1))

    images = np.zeros((17, 224, 224, 3), np.uint8)
    for pad, ran in ((False, 17), (True, 24)):
        out = Classifier("m", (224, 224, 3), infer, ["a", "b", "c", "d"], 32, "test", pad).predict(images)
        assert out.shape == (17, 4) and calls[-1] == ran


def test_registry_knows_the_default_and_the_shared_model_and_rejects_others():
    assert get_spec("resnet50").input_shape == (224, 224, 3)
    assert "mobilenet_v1_0.75" in MODELS
    with pytest.raises(ValueError, match="known models"):
        get_spec("alexnet")


def test_gpu_discovery_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert gpu_ids() == ["0", "2"]
    commands = worker_commands(gpu_ids(), ["resnet50", "mobilenet_v2"])
    names = [(name, env["CUDA_VISIBLE_DEVICES"]) for name, _, env in commands]
    assert names == [("worker-resnet50-gpu0", "0"), ("worker-mobilenet_v2-gpu0", "0"),
                     ("worker-resnet50-gpu2", "2"), ("worker-mobilenet_v2-gpu2", "2"), ("decoder", "")]
    assert all(env.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true" for _, _, env in commands[:4])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_ids() == []
    [(name, argv, env), (_, decoder_argv, _)] = worker_commands([], ["resnet50"])
    assert env["CUDA_VISIBLE_DEVICES"] == "" and "resnet50@%h" in argv and "TF_FORCE_GPU_ALLOW_GROWTH" not in env
    # interactive first: a worker serves its first queue first
    assert argv[argv.index("--queues") + 1] == "interactive.resnet50,bulk.resnet50"
    assert decoder_argv[decoder_argv.index("--queues") + 1] == "jobs,webhooks"


def test_shadow_workers_take_their_device_and_their_queue_only(monkeypatch):
    from imageclf import settings
    from imageclf.workers.roles import model_of_queues, shadow_only

    monkeypatch.setattr(settings, "SHADOW_DEVICE", "cpu")
    commands = {name: (argv, env) for name, argv, env in worker_commands(["0", "1"], ["plants"])}
    argv, env = commands["worker-plants-shadow"]
    assert argv[:3] == ["nice", "-n", "19"] and env["CUDA_VISIBLE_DEVICES"] == ""
    queues = argv[argv.index("--queues") + 1]
    assert queues == "shadow.plants" and shadow_only(queues) and model_of_queues(queues) == "plants"
    assert settings.shadow_copies_queue("plants") == "shadow.plants"
    monkeypatch.setattr(settings, "SHADOW_DEVICE", "1")
    commands = {name: (argv, env) for name, argv, env in worker_commands(["0", "1"], ["plants"])}
    assert sorted(commands) == ["decoder", "worker-plants-gpu0", "worker-plants-shadow"]
    assert commands["worker-plants-shadow"][1]["CUDA_VISIBLE_DEVICES"] == "1"
    assert commands["worker-plants-shadow"][0][0] != "nice"
    assert not shadow_only("interactive.plants,bulk.plants")
    monkeypatch.setattr(settings, "SHADOW_DEVICE", "")
    assert settings.shadow_copies_queue("plants") == "bulk.plants"


def test_a_worker_serves_the_model_its_queues_name_and_decoders_none():
    from imageclf import settings
    from imageclf.workers.roles import model_of_queues

    assert model_of_queues(None) == settings.MODELS[0]
    assert model_of_queues("interactive.mobilenet_v2,bulk.mobilenet_v2") == "mobilenet_v2"
    assert model_of_queues(["bulk.resnet50"]) == "resnet50" and model_of_queues("jobs,webhooks") is None
    with pytest.raises(SystemExit, match="one model"):
        model_of_queues("interactive.resnet50,bulk.mobilenet_v2")


def test_the_api_process_never_imports_tensorflow_nor_opentelemetry_when_tracing_is_off():
    import subprocess
    import sys

    from tests.helpers import ROOT

    # (redis-py imports OpenTelemetry's metrics API itself when installed; tracing must add nothing to it.)
    code = ("import sys; from imageclf.api import create_app; create_app(); "
            "bad = [m for m in sys.modules if m in ('tensorflow', 'keras', 'opentelemetry.sdk.trace') "
            "or m.startswith(('opentelemetry.instrumentation', 'opentelemetry.exporter'))]; assert not bad, bad")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr


def test_video_summary_picks_the_most_frequent_label_and_joins_runs():
    from imageclf.workers.jobs.results import summarize

    def frame(t: float, cid: int) -> dict:
        return {"t": t, "frame": int(t * 10), "predictions": [{"label": f"c{cid}", "class_id": cid, "probability": 1}]}

    frames = [frame(0, 1), frame(1, 2), frame(2, 2), frame(3, 1), frame(4, 2)]
    summary = summarize(frames, duration_s=5.5)
    assert (summary["label"], summary["class_id"], summary["share"], summary["frames"]) == ("c2", 2, 0.6, 5)
    assert [(s["class_id"], s["start"], s["end"], s["frames"]) for s in summary["segments"]] == [
        (1, 0, 1, 1), (2, 1, 3, 2), (1, 3, 4, 1), (2, 4, 5.5, 1)]
    assert summarize([], 3.0) is None


def test_job_items_keep_upload_order_and_missing_outcomes_count_as_failed():
    from imageclf.workers.jobs.results import images_result

    ok = {"status": "SUCCESS", "predictions": []}
    result = images_result(["a", "b", "c"], {2: ok, 0: {"status": "FAILURE", "error": "bad"}})
    assert [(i["index"], i["name"], i["status"]) for i in result["items"]] == [
        (0, "a", "FAILURE"), (1, "b", "FAILURE"), (2, "c", "SUCCESS")]
    assert (result["succeeded"], result["failed"]) == (1, 2)


def test_frame_sampling_by_rate_or_count():
    from imageclf.models.video import VideoInfo, sample_times

    info = VideoInfo(duration_s=14.0, frame_rate=20.0, width=1, height=1, codec="h264")
    assert sample_times(info, None, None, 100) == [float(i) for i in range(14)]
    assert sample_times(info, 2.0, None, 100)[:3] == [0.0, 0.5, 1.0] and len(sample_times(info, 2.0, None, 100)) == 28
    assert len(sample_times(info, None, 1, 1000)) == 280 and sample_times(info, None, 10, 1000)[1] == 0.5
    assert len(sample_times(info, None, 1, 50)) == 50


def test_the_batch_buffer_serves_interactive_requests_first_and_caps_bulk_fill():
    from types import SimpleNamespace

    from imageclf.workers.model.batching import PriorityBuffer
    from imageclf.workers.model.classify import bulk_batch_size

    buffer = PriorityBuffer("bulk.")
    for name in ("b1", "b2", "i1", "b3", "i2"):
        queue = "bulk.m" if name.startswith("b") else "interactive.m"
        buffer.put(SimpleNamespace(name=name, delivery_info={"routing_key": queue}))
    assert buffer.interactive() == 2 and buffer.qsize() == 5
    assert [r.name for r in buffer.take(limit=32, bulk_limit=3)] == ["i1", "i2", "b1"]
    assert [r.name for r in buffer.take(limit=32, bulk_limit=1)] == ["b2"]
    assert [r.name for r in buffer.take(limit=32, bulk_limit=8)] == ["b3"] and buffer.qsize() == 0
    assert (bulk_batch_size(0, 32, gpu_visible=True), bulk_batch_size(0, 32, gpu_visible=False)) == (32, 1)
    assert bulk_batch_size(64, 32, gpu_visible=False) == 32 and bulk_batch_size(4, 32, gpu_visible=True) == 4


def test_a_job_part_counts_its_images_in_a_batch_and_goes_whole():
    from types import SimpleNamespace

    from imageclf.workers.model.batching import PriorityBuffer

    buffer = PriorityBuffer("bulk.")

    def put(name: str, images: int | None) -> None:
        queue = "interactive.m" if images is None else "bulk.m"
        kwargs = {"items": list(range(images))} if images else {}
        buffer.put(SimpleNamespace(name=name, kwargs=kwargs, delivery_info={"routing_key": queue}))

    put("p8", 8), put("i1", None), put("p4", 4), put("p16", 16), put("i2", None)
    assert [r.name for r in buffer.take(limit=32, bulk_limit=16)] == ["i1", "i2", "p8", "p4"]  # 14 images
    assert [r.name for r in buffer.take(limit=32, bulk_limit=8)] == ["p16"]  # larger than the room: alone
    put("p16b", 16), put("i3", None)
    assert [r.name for r in buffer.take(limit=32, bulk_limit=16)] == ["i3"]  # no room for the part beside it
    assert [r.name for r in buffer.take(limit=32, bulk_limit=16)] == ["p16b"]


def test_a_jobs_windows_follow_its_decoders_and_the_model_workers_batches(monkeypatch):
    from imageclf import settings
    from imageclf.workers.jobs.driver import windows

    monkeypatch.setattr(settings, "JOB_CHUNK", 32)
    monkeypatch.setattr(settings, "JOB_IN_FLIGHT", 0)
    monkeypatch.setattr(settings, "BULK_IN_FLIGHT", 64)
    decoders = [{"role": "decoder"}] * 8
    gpu = [{"role": "model", "model": "m", "bulk_batch": 32}]
    cpu = [{"role": "model", "model": "m", "bulk_batch": 1}]
    # (chunk, part, the job's window, the model's window), windows in chunks
    assert windows(decoders + gpu, "m") == (32, 32, 32, 34)  # 4 chunks a decoder; 64 images waiting + 32 decoding
    assert windows(decoders + cpu, "m") == (32, 1, 32, 2)  # parts of one image: 64 messages at most
    assert windows(decoders + gpu + gpu, "m") == (32, 32, 32, 36)
    assert windows(gpu, "other") == (32, 1, 4, 2)  # no worker of that model yet: one image a part
    monkeypatch.setattr(settings, "JOB_IN_FLIGHT", 8)
    assert windows(decoders + gpu, "m") == (4, 4, 2, 48)  # chunks of at most half of JOB_IN_FLIGHT


def test_upload_folders_of_jobs_redis_forgot_are_swept(tmp_path, monkeypatch, redis_client):
    import os
    import time

    from imageclf import settings
    from imageclf.workers.jobs.store import job_key, sweep_orphans

    monkeypatch.setattr(settings, "UPLOAD_DIR", str(tmp_path))
    old = time.time() - 7200
    for name in ("forgotten", "known", "fresh"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "video.mp4").write_bytes(b"x")
        if name != "fresh":
            os.utime(tmp_path / name, (old, old))
    redis_client.set(job_key("known"), "1", ex=60)
    assert sweep_orphans(redis_client, older_than_s=3600) == ["forgotten"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "known"]


def test_model_config_defaults_presets_and_errors_that_name_file_and_key(tmp_path):
    from imageclf.models.repository import ModelConfig, RepositoryError, parse_config, read_config

    path = tmp_path / "config.json"
    assert read_config(tmp_path) == ModelConfig()  # no file: every default (x/255, RGB, NHWC, squash, softmax)
    caffe = parse_config({"preprocess": "caffe"}, path)
    assert (caffe.channels, caffe.mean, caffe.scale) == ("BGR", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
    torch = parse_config({"preprocess": "torch", "layout": "NCHW", "output": "logits"}, path)
    assert torch.std == (0.229, 0.224, 0.225) and torch.scale == (1 / 255,) * 3
    assert parse_config({"mean": 127.5, "std": [1, 2, 3], "input_size": [96, 128]}, path).std == (1.0, 2.0, 3.0)
    for raw, says in (
        ({"scael": 1}, "unknown key(s) 'scael'"),
        ({"layout": "CHW"}, "'layout' must be one of 'NHWC', 'NCHW'"),
        ({"mean": [1, 2]}, "'mean' must be a number or a list of 3"),
        ({"std": 0}, "'std' must be positive numbers"),
        ({"input_size": [224]}, "'input_size' must be [height, width]"),
        ({"preprocess": "torch", "mean": 0.5}, "'preprocess': 'torch' sets scale, mean, std and channels itself"),
        ([1, 2], "must hold a JSON object"),
    ):
        with pytest.raises(RepositoryError, match=re.escape(f"{path}: {says}")):
            parse_config(raw, path)
    path.write_text("{not json")
    with pytest.raises(RepositoryError, match="not valid JSON"):
        read_config(tmp_path)


def test_labels_versions_and_model_files_of_a_repository_folder(tmp_path):
    from imageclf.models.repository import RepositoryError, model_file, read_labels, versions

    with pytest.raises(RepositoryError, match="labels.txt: missing"):
        read_labels(tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\n\n")
    assert read_labels(tmp_path) == ["cat", "dog"]  # trailing newlines are not classes
    (tmp_path / "labels.txt").write_text("cat\n\ndog\n")
    with pytest.raises(RepositoryError, match="line 2 is blank"):
        read_labels(tmp_path)
    for name in ("1", "10", "2", "0", "latest", ".incoming-3"):
        (tmp_path / name).mkdir()
    assert versions(tmp_path) == [1, 2, 10]  # numeric order; only positive integers are versions
    with pytest.raises(RepositoryError, match="holds no model"):
        model_file(tmp_path / "2")
    (tmp_path / "2" / "model.onnx").write_bytes(b"x")
    assert model_file(tmp_path / "2") == (tmp_path / "2" / "model.onnx", "onnx")
    (tmp_path / "2" / "saved_model").mkdir()
    with pytest.raises(RepositoryError, match="holds several models"):
        model_file(tmp_path / "2")


def test_center_crop_keeps_the_middle_and_squash_keeps_everything():
    # A 300x100 image: left third red, middle green, right blue. Center-cropped to 50x50, only green remains.
    img = Image.new("RGB", (300, 100), "red")
    img.paste((0, 255, 0), (100, 0, 200, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    data = encode(img, "PNG")
    crop = np.frombuffer(decode_to_pixels(data, (50, 50), 10**8, "center_crop"), np.uint8).reshape(50, 50, 3)
    assert (crop[:, :, 1] > 200).all() and (crop[:, :, 0] < 50).all()
    squash = np.frombuffer(decode_to_pixels(data, (40, 60), 10**8), np.uint8).reshape(40, 60, 3)
    assert squash[20, 5, 0] > 200 and squash[20, 30, 1] > 200 and squash[20, 55, 2] > 200


def test_the_batch_size_is_the_smallest_within_5_percent_of_the_best_throughput():
    from imageclf.workers.model.batch_size import candidates, pick, throughput_curve

    assert candidates(32) == [1, 2, 4, 8, 16, 32] and candidates(12) == [1, 2, 4, 8, 12] and candidates(1) == [1]
    cpu = {1: 13.9, 2: 15.8, 4: 16.9, 8: 17.7, 16: 18.2, 32: 18.4}  # flat past 8: the latency of 8 is free
    gpu = {1: 40.0, 2: 80.0, 4: 150.0, 8: 280.0, 16: 480.0, 32: 700.0}  # every doubling pays
    assert pick(cpu) == 8 and pick(gpu) == 32
    assert pick({1: 10.0, 8: 9.0}) == 1  # larger batches are no faster at all: no batching
    # A model whose cost per call is fixed (10 ms whatever the batch): larger batches are faster.
    curve, rounds = throughput_curve(lambda x: time.sleep(0.01) or x, (2, 2, 3), 8)
    assert list(curve) == [1, 2, 4, 8] and curve[8] > 4 * curve[1] and pick(curve) == 8 and rounds >= 2


def test_the_batch_size_pick_does_not_follow_one_noisy_round():
    """Rounds go on until two in a row agree; a round bent by someone else's work on the cores loses."""
    from imageclf.workers.model.batch_size import MAX_ROUNDS, pick, throughput_curve

    quiet = {1: 41.0, 2: 56.0, 4: 75.0, 8: 80.0, 16: 79.0}
    # What a MobileNet worker measured with another TensorFlow process on its cores, then quiet rounds.
    rounds = [{1: 41.0, 2: 56.0, 4: 75.0, 8: 40.0, 16: 33.0}, quiet, quiet, quiet]
    calls = iter(rate for r in rounds for rate in r.values())
    moves = []
    curve, used = throughput_curve(lambda x: x, (2, 2, 3), 16, measure=lambda predict, batch: next(calls),
                                   on_change=lambda *move: moves.append(move))
    assert curve == quiet and used == 3 and moves == [(2, 4, 8)]
    # One lucky round for the smallest batch does not win: the next round must agree with it.
    lucky = {1: 90.0, 2: 56.0, 4: 75.0, 8: 80.0, 16: 79.0}
    calls = iter(rate for r in [quiet, lucky, quiet, quiet] for rate in r.values())
    curve, used = throughput_curve(lambda x: x, (2, 2, 3), 16, measure=lambda predict, batch: next(calls))
    assert pick(curve) == 8 and used == 4
    # A pick that never settles (each round favours the other size) stops after MAX_ROUNDS with the
    # size picked most often, the latest on a tie.
    flip = iter([100.0, 50.0, 50.0, 100.0] * MAX_ROUNDS)
    moves.clear()
    curve, used = throughput_curve(lambda x: x, (2, 2, 3), 2, measure=lambda predict, batch: next(flip),
                                   on_change=lambda *move: moves.append(move))
    assert MAX_ROUNDS == 6 and used == MAX_ROUNDS and len(moves) == MAX_ROUNDS - 1 and pick(curve) == 2


def test_sentinel_urls_name_every_sentinel_the_db_and_the_password():
    from imageclf.core.redis_clients import connect, is_sentinel, sentinel_nodes

    url = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://redis-sentinel-2"
    assert is_sentinel(url) and not is_sentinel("redis://127.0.0.1:6379/0")
    assert sentinel_nodes(url) == ([("10.0.0.1", 26379), ("10.0.0.2", 26380), ("redis-sentinel-2", 26379)], 2, "s3cret")
    with pytest.raises(ValueError, match="sentinel://"):
        sentinel_nodes("sentinel://a:1;redis://b:2")
    with pytest.raises(ValueError, match="REDIS_SENTINEL_MASTER"):
        connect("sentinel://127.0.0.1:26379", master="")


def test_stale_model_routes_are_read_again_by_one_thread_while_the_others_wait_for_its_answer(tmp_path):
    """16 request threads find the cached routes stale while Redis is slow and the model's record changed: one
    MGET, not 16, and every thread answers with the new record (none from the stale entry)."""
    import subprocess
    import threading

    import redis

    from imageclf.core.model_records import CACHE_S, SERVED_PREFIX, InputLookup
    from imageclf.launch.redis_server import free_port, ping, redis_argv
    from imageclf.launch.supervise import wait_until

    port = free_port()
    server = subprocess.Popen(redis_argv(port, str(tmp_path), durable=False), stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        assert wait_until(lambda: ping(url), 15)
        client = redis.Redis.from_url(url)

        def mgets() -> int:
            return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

        lookup = InputLookup(client)
        first = lookup.routes_of("resnet50")  # built in: served at version 1 before any worker announces it
        assert first.default.version == 1
        client.set(SERVED_PREFIX + "resnet50", json.dumps({"input_size": [160, 160], "version": 2}))
        time.sleep(CACHE_S + 0.05)
        before = mgets()
        slow = threading.Thread(target=lambda: redis.Redis.from_url(url).execute_command("DEBUG", "SLEEP", "0.5"))
        slow.start()
        time.sleep(0.1)  # the server is asleep: a read now takes until it wakes
        start = threading.Barrier(16)
        found: list[object] = []

        def request() -> None:
            start.wait()
            found.append(lookup.routes_of("resnet50"))

        threads = [threading.Thread(target=request) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads + [slow]:
            thread.join(10)
        assert len(found) == 16 and {(r.default.version, r.default.height) for r in found} == {(2, 160)}
        assert mgets() - before == 1
        time.sleep(CACHE_S + 0.05)
        lookup.routes_of("resnet50")
        assert mgets() - before == 2  # still read again once stale
    finally:
        server.terminate()
        server.wait(10)
