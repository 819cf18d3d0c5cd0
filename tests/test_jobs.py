"""Jobs through the whole service: images, zips and videos, progress, cancel, and the CLI."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import av
import httpx

from tests.helpers import ROOT, SHARED, labelled_photos

VIDEO = SHARED / "video"


def manifest_label(path: str) -> str:
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return next(r["expected_label"] for r in csv.DictReader(f, delimiter="\t") if r["path"] == path)


def submit(service, timeout: float = 60, **kwargs) -> str:
    response = httpx.post(service.url + "/jobs", timeout=timeout, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def follow(service, job: str, timeout_s: float = 300) -> tuple[dict, list[tuple[str, int, int]]]:
    """Poll the job until it ends: its final body and every (status, done, total) seen."""
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{service.url}/result/{job}", timeout=10).json()
        seen.append((body["status"], body["done"], body["total"]))
        if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return body, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job} did not end within {timeout_s} s; last state {seen[-1]}")


def duration_s(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def test_a_video_comes_back_with_its_label_and_a_timeline(service):
    path = VIDEO / "cockatoo.mp4"
    job = submit(service, files={"video": (path.name, path.read_bytes(), "video/mp4")}, data={"fps": "1"})
    body, _ = follow(service, job)
    assert body["status"] == "SUCCESS", body
    result = body["result"]
    assert result["summary"]["label"] == manifest_label("video/cockatoo.mp4")
    times = [f["t"] for f in result["frames"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert abs(len(times) - 1 * duration_s(path)) <= 1
    assert all(f["frame"] == round(f["t"] * result["video"]["frame_rate"]) for f in result["frames"])
    segments = result["summary"]["segments"]
    assert segments[0]["start"] == times[0] and segments[-1]["end"] >= times[-1]
    assert sum(s["frames"] for s in segments) == len(times) == result["summary"]["frames"]
    assert all(a["end"] == b["start"] and a["label"] != b["label"] for a, b in zip(segments, segments[1:]))
    top1 = [f["predictions"][0]["label"] for f in result["frames"]]
    assert result["summary"]["share"] == round(top1.count(result["summary"]["label"]) / len(top1), 4)


def test_a_video_cut_short_keeps_the_frames_before_the_cut_in_order(service, tmp_path):
    """A video whose data stops halfway (its header intact: it passes the checks at submit) is decoded in chunks
    by several decoders: those past the cut find nothing, the one across it stops there. The result holds the
    frames before the cut, once each and in order, and says why it stopped."""
    import numpy as np

    path = tmp_path / "full.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # the header first
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt, stream.options = 320, 240, "yuv420p", {"g": "10"}
        rng = np.random.default_rng(1)
        for _ in range(100):  # 10 s
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    job = submit(service, files={"video": ("cut.mp4", data[: len(data) // 2], "video/mp4")}, data={"fps": "2"})
    body, _ = follow(service, job)
    assert body["status"] == "SUCCESS", body
    result = body["result"]
    times = [f["t"] for f in result["frames"]]
    assert 0 < len(times) < 20  # 20 sampled in the 10 s the header announces
    assert times == [i * 0.5 for i in range(len(times))]  # from the start, none missing, none twice
    assert "corrupt" in result["decode_error"] and result["summary"]["frames"] == len(times)


def test_a_short_clip_sampled_every_frame(service):
    path = VIDEO / "realshort.mp4"
    job = submit(service, files={"video": (path.name, path.read_bytes())}, data={"every_n_frames": "3", "top": "2"})
    body, _ = follow(service, job)
    assert body["status"] == "SUCCESS", body
    frames = body["result"]["frames"]
    assert [f["frame"] for f in frames] == list(range(0, 3 * len(frames), 3))
    assert abs(len(frames) - duration_s(path) * body["result"]["video"]["frame_rate"] / 3) <= 1
    assert all(len(f["predictions"]) == 2 for f in frames)


def test_twenty_photos_come_back_labelled_in_order_with_progress(service):
    photos = (labelled_photos() * 2)[:20]
    files = [("images", (Path(r["path"]).name, (SHARED / r["path"]).read_bytes())) for r in photos]
    job = submit(service, files=files)
    body, seen = follow(service, job)
    assert body["status"] == "SUCCESS", body
    items = body["result"]["items"]
    assert [i["name"] for i in items] == [Path(r["path"]).name for r in photos]
    assert [i["predictions"][0]["class_id"] for i in items] == [int(r["expected_class_id"]) for r in photos]
    progress = [done for status, done, _ in seen if status == "PROGRESS"]
    assert any(b > a for a, b in zip(progress, progress[1:])), f"progress never moved: {seen}"
    assert all(total == 20 for _, _, total in seen) and seen[-1][1] == 20
    assert not (Path(service.env["UPLOAD_DIR"]) / job).exists(), "a finished job's files were kept"


def test_a_zip_entry_that_is_not_an_image_fails_alone(service):
    photos = labelled_photos()[:3]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photos/readme.txt", "not an image")
        for r in photos:
            archive.write(SHARED / r["path"], "photos/" + Path(r["path"]).name)
        archive.writestr("__MACOSX/photos/._junk.jpg", b"resource fork")
    job = submit(service, files={"images": ("set.zip", buffer.getvalue())})
    body, _ = follow(service, job)
    assert body["status"] == "SUCCESS", body
    items = body["result"]["items"]
    assert [i["name"] for i in items] == ["set.zip/photos/readme.txt"] + [
        f"set.zip/photos/{Path(r['path']).name}" for r in photos]
    assert items[0]["status"] == "FAILURE" and "not an image" in items[0]["error"]
    assert [i["predictions"][0]["class_id"] for i in items[1:]] == [int(r["expected_class_id"]) for r in photos]
    assert (body["result"]["succeeded"], body["result"]["failed"]) == (3, 1)


def test_cancelling_a_running_video_stops_it_and_removes_its_files(service, redis_client):
    path = VIDEO / "dog_border_collie.mp4"
    job = submit(service, files={"video": (path.name, path.read_bytes())}, data={"every_n_frames": "1"})
    uploads = Path(service.env["UPLOAD_DIR"]) / job
    deadline = time.monotonic() + 120
    while (body := httpx.get(f"{service.url}/result/{job}", timeout=10).json())["done"] == 0:
        assert time.monotonic() < deadline and body["status"] in ("PENDING", "PROGRESS"), body
        time.sleep(0.05)
    assert uploads.is_dir()
    cancelled = httpx.delete(f"{service.url}/jobs/{job}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "REVOKED"
    time.sleep(1.0)  # a step that was running sees the cancel within its next round
    body = httpx.get(f"{service.url}/result/{job}", timeout=10).json()
    assert body["status"] == "REVOKED" and body["done"] < body["total"]
    assert not uploads.exists()
    assert not redis_client.exists(f"imageclf:job:{job}:pending", f"imageclf:job:{job}:items")
    # The service goes on: the next job still works.
    again = submit(service, files={"images": ("a.jpg", (SHARED / labelled_photos()[0]["path"]).read_bytes())})
    assert follow(service, again)[0]["status"] == "SUCCESS"


def cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imageclf.client", "classify", "--url", service.url, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_cli_prints_labels_for_photos_and_a_video_timeline(service, tmp_path):
    row = labelled_photos()[0]
    one = cli(service, str(SHARED / row["path"]))
    assert one.returncode == 0, one.stderr
    assert one.stdout.split("\t")[1] == row["expected_label"]

    folder = tmp_path / "photos"
    folder.mkdir()
    for r in labelled_photos()[:4]:
        (folder / Path(r["path"]).name).write_bytes((SHARED / r["path"]).read_bytes())
    many = cli(service, str(folder), "--csv")
    assert many.returncode == 0, many.stderr
    rows = list(csv.DictReader(io.StringIO(many.stdout)))
    expected = {Path(r["path"]).name: r["expected_label"] for r in labelled_photos()[:4]}
    assert {r["name"]: r["label"] for r in rows} == expected

    video = cli(service, str(VIDEO / "cockatoo.mp4"))
    assert video.returncode == 0, video.stderr
    assert video.stdout.startswith(f"{VIDEO / 'cockatoo.mp4'}: {manifest_label('video/cockatoo.mp4')}")
    assert "frame" in video.stderr and "14/14" in video.stderr  # the progress bar
    assert sum(" s  " in line for line in video.stdout.splitlines()) >= 2  # the timeline


def test_the_cli_fails_clearly(service, tmp_path):
    missing = cli(service, str(tmp_path / "nowhere.jpg"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    (tmp_path / "a.txt").write_text("not an image")
    (tmp_path / "b.jpg").write_bytes((SHARED / labelled_photos()[0]["path"]).read_bytes())
    partly = cli(service, str(tmp_path / "a.txt"), str(tmp_path / "b.jpg"))
    assert partly.returncode == 1 and "a.txt\tFAILED" in partly.stdout
    down = subprocess.run([sys.executable, "-m", "imageclf.client", "classify", "--url", "http://127.0.0.1:9",
                           str(tmp_path / "b.jpg")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_a_zip_entry_expanding_past_the_image_limit_fails_alone(service):
    """A small zip whose entry inflates to 21 MB of zeros: read no further than MAX_UPLOAD_MB (20), failed alone."""
    row = labelled_photos()[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.jpg", bytes(21 * 2**20))
        archive.write(SHARED / row["path"], "photo.jpg")
    assert len(buffer.getvalue()) < 2 * 2**20  # the upload is small; the entry inflates 10x past it
    job = submit(service, files={"images": ("b.zip", buffer.getvalue())})
    body, _ = follow(service, job)
    bomb, photo = body["result"]["items"]
    assert bomb["status"] == "FAILURE" and "MAX_UPLOAD_MB" in bomb["error"]
    assert photo["predictions"][0]["class_id"] == int(row["expected_class_id"])


def test_an_item_the_broker_lost_is_sent_again_and_the_job_finishes(service, redis_client, redis_url):
    """As after a failover to a replica that never had the last items: an item's message and pixels vanish
    from Redis while it waits. The job notices within a few seconds and sends the item again, instead of
    waiting for it until RESULT_TTL_S (an hour)."""
    from celery import Celery

    from imageclf.core.payloads import PIXELS_PREFIX
    from imageclf.workers.jobs.store import pending_key

    app = Celery("test-client")
    app.config_from_object("imageclf.core.celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=None)
    queue = "bulk.mobilenet_v1_0.75"
    model_worker = [f"mobilenet_v1_0.75@{socket.gethostname()}"]
    photos = labelled_photos()[:5]
    files = [("images", (Path(r["path"]).name, (SHARED / r["path"]).read_bytes())) for r in photos]
    assert app.control.cancel_consumer(queue, reply=True, timeout=5, destination=model_worker)
    try:
        job = submit(service, files=files)
        deadline = time.monotonic() + 60
        while sum(json.loads(c)["count"] for c in redis_client.hvals(pending_key(job))) < len(photos) \
                or redis_client.llen(queue) < len(photos):  # every item decoded and queued for the model
            assert time.monotonic() < deadline, "the job's items were not all queued"
            time.sleep(0.05)
        lost_id, record = next(iter(redis_client.hgetall(pending_key(job)).items()))  # a chunk: all its parts
        chunk = json.loads(record)
        lost = range(chunk["first"], chunk["first"] + chunk["count"])
        for message in [m for m in redis_client.lrange(queue, 0, -1) if lost_id in m]:
            assert redis_client.lrem(queue, 1, message) == 1
        keys = [f"{PIXELS_PREFIX}{lost_id.decode()}.{k}" for k in range(chunk["parts"])]
        assert redis_client.delete(*keys) == len(keys)
    finally:
        assert app.control.add_consumer(queue, reply=True, timeout=5, destination=model_worker)
    body, _ = follow(service, job, timeout_s=120)
    assert body["status"] == "SUCCESS", body
    items = body["result"]["items"]
    assert [i["status"] for i in items] == ["SUCCESS"] * len(photos), items
    assert [i["predictions"][0]["class_id"] for i in items] == [int(r["expected_class_id"]) for r in photos]
    assert [items[i]["name"] for i in lost] == [Path(photos[i]["path"]).name for i in lost]
    assert "was lost by the broker" in service.log_path.read_text(errors="replace")
