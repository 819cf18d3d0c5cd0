"""The user's own models from a model repository, served by the real service: answers equal the model's own.

The models are made here (tests/user_models.py): a Keras 2-style CNN (4 classes, 160×160,
/255) added with `imageclf.launch.add_model` as legacy `.h5` and as `.keras`, and an ONNX model in
PyTorch's style (NCHW, torch mean/std, logits, 128×96, center crop). New versions are
rolled out (and back) under load; broken models are reported without taking anything down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from imageclf.models.images import decode_to_pixels
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, SHARED, finished_job, labelled_photos
from tests.user_models import LABELS, keras_cnn, onnx_classifier, write_model

PHOTOS = [SHARED / r["path"] for r in labelled_photos()[:4]]
SERVED = ("plants_h5", "plants_keras", "parts_onnx", "rollout", "imagenet_mobilenet")
ONNX_CONFIG = {"preprocess": "torch", "layout": "NCHW", "output": "logits", "resize": "center_crop"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plants_h5 and plants_keras added with imageclf.launch.add_model, parts_onnx written by hand."""
    from imageclf.cli import main as imageclf

    def add_model(argv: list[str]) -> int:
        return imageclf(["add-model", *argv])

    repo = tmp_path_factory.mktemp("model_repository")
    files = tmp_path_factory.mktemp("user_files")
    (files / "labels.txt").write_text("\n".join(LABELS) + "\n")
    keras_cnn(seed=1).save(files / "disease_160.h5")
    keras_cnn(seed=1).save(files / "disease_160.keras")
    for name, file in (("plants_h5", "disease_160.h5"), ("plants_keras", "disease_160.keras")):
        code = add_model([str(files / file), "--name", name, "--labels", str(files / "labels.txt"),
                          "--repository", str(repo), "--sample", str(PHOTOS[0])])
        assert code == 0 and (repo / name / "1").is_dir()
    write_model(repo, "parts_onnx", 1, lambda d: onnx_classifier(d / "model.onnx", seed=7), config=ONNX_CONFIG)
    write_model(repo, "rollout", 1, lambda d: keras_cnn(seed=3).save(d / "model.keras"))
    # A real ImageNet classifier brought as a user would: a .keras file, a labels file, its preprocessing.
    index = json.loads(CLASS_INDEX.read_text())
    (files / "imagenet.txt").write_text("\n".join(index[str(i)][1] for i in range(len(index))) + "\n")
    assert add_model([str(MOBILENET_FILE), "--name", "imagenet_mobilenet", "--labels", str(files / "imagenet.txt"),
                      "--preprocess", "tf", "--repository", str(repo)]) == 0
    return repo


@pytest.fixture(scope="module")
def users_service(repository: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/5", "MODEL_REPOSITORY": str(repository),
        "MODELS": ",".join(SERVED), "MODEL_POLL_S": "1", "API_WORKERS": "1",  # BATCH_SIZE unset: measured
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("user-model-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "user-models.log").start()
    yield svc
    assert svc.stop() == 0, svc.log_tail()


def predict(svc: ServiceProcess, path: Path, model: str, top: int = 4) -> dict:
    response = httpx.post(svc.url + "/predict", params={"model": model, "top": top},
                          files={"image": (path.name, path.read_bytes())}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def by_class(body: dict) -> np.ndarray:
    probabilities = np.zeros(len(LABELS), np.float32)
    for p in body["predictions"]:
        assert p["label"] == LABELS[p["class_id"]]
        probabilities[p["class_id"]] = p["probability"]
    return probabilities


@pytest.mark.parametrize("model", ["plants_h5", "plants_keras"])
def test_keras_user_model_answers_as_its_own_predict(users_service, model):
    """The service's answer equals `model.predict(pixels / 255)` on the very pixels the service made."""
    reference = keras_cnn(seed=1)
    for path in PHOTOS:
        body = predict(users_service, path, model)
        assert body["model"] == model and body["model_version"] == 1
        pixels = np.frombuffer(decode_to_pixels(path.read_bytes(), (160, 160), 10**9), np.uint8)
        expected = reference.predict(pixels.reshape(1, 160, 160, 3).astype("float32") / 255, verbose=0)[0]
        assert np.abs(by_class(body) - expected).max() <= 1e-5, path.name


def test_onnx_nchw_logits_model_with_torch_preprocessing_and_center_crop(users_service, repository):
    import onnxruntime as ort

    session = ort.InferenceSession(str(repository / "parts_onnx" / "1" / "model.onnx"))
    for path in PHOTOS:
        body = predict(users_service, path, "parts_onnx")
        assert body["model_version"] == 1
        pixels = np.frombuffer(decode_to_pixels(path.read_bytes(), (128, 96), 10**9, "center_crop"), np.uint8)
        x = (pixels.reshape(1, 128, 96, 3) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        logits = session.run(None, {"input": x.transpose(0, 3, 1, 2).astype(np.float32)})[0][0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert np.abs(by_class(body) - expected).max() <= 1e-5, path.name


def test_a_real_imagenet_model_from_the_repository_gives_the_manifest_labels(users_service, reference_model):
    """The shared MobileNet added with `--preprocess tf` and a labels file answers like Keras' own pipeline."""
    for row in labelled_photos():
        path = SHARED / row["path"]
        body = predict(users_service, path, "imagenet_mobilenet", top=5)
        top = body["predictions"]
        assert (top[0]["class_id"], top[0]["label"]) == (int(row["expected_class_id"]), row["expected_label"])
        expected = reference_model(decode_to_pixels(path.read_bytes(), 224, 10**9))
        assert max(abs(p["probability"] - float(expected[p["class_id"]])) for p in top) <= 1e-4, row["path"]


def test_models_lists_versions_labels_input_and_preprocessing(users_service):
    body = httpx.get(users_service.url + "/models", timeout=10).json()
    assert body["default"] == "plants_h5"
    models = {m["name"]: m for m in body["models"]}
    onnx = models["parts_onnx"]
    assert (onnx["served_version"], onnx["versions"]["1"]["state"], list(onnx["versions"]), onnx["labels"],
            onnx["input_size"]) == (1, "ready", ["1"], 4, [128, 96])
    assert onnx["versions"]["1"]["share"] == 100 and onnx["versions"]["1"]["rss_mb"] >= 0
    assert (onnx["preprocess"], onnx["layout"], onnx["output"], onnx["resize"], onnx["format"]) == (
        "torch", "NCHW", "logits", "center_crop", "onnx")
    assert models["plants_h5"]["format"] == "h5" and models["plants_keras"]["format"] == "keras"
    assert models["plants_h5"]["scale"] == pytest.approx([1 / 255] * 3)
    assert models["imagenet_mobilenet"]["labels"] == 1000 and models["imagenet_mobilenet"]["preprocess"] == "tf"
    assert all(len(m["workers"]) == 1 for m in models.values())
    # BATCH_SIZE is unset: each worker timed its model and picked the smallest batch within 5 % of its best.
    for model in models.values():
        worker = model["workers"][0]
        curve = {int(k): v for k, v in worker["batch_curve"].items()}
        assert worker["batch_size_from"] == "measured" and list(curve) == [1, 2, 4, 8, 16, 32]
        assert curve[worker["batch_size"]] >= 0.95 * max(curve.values())
        assert all(v < 0.95 * max(curve.values()) for k, v in curve.items() if k < worker["batch_size"])


def test_jobs_and_videos_run_on_a_repository_model(users_service):
    jobs = [
        httpx.post(users_service.url + "/jobs", data={"model": "parts_onnx", "top": "2"}, timeout=60,
                   files=[("images", (p.name, p.read_bytes())) for p in PHOTOS[:2]]),
        httpx.post(users_service.url + "/jobs", data={"model": "plants_keras", "every_n_frames": "6"}, timeout=60,
                   files={"video": ("realshort.mp4", (SHARED / "video" / "realshort.mp4").read_bytes())}),
    ]
    for job in jobs:
        assert job.status_code == 202, job.text
        body = finished_job(users_service.url, job.headers["Location"])
        assert body["status"] == "SUCCESS", body
        entries = body["result"]["items"] if body["kind"] == "images" else body["result"]["frames"]
        assert entries and all(e["model_version"] == 1 and e["predictions"][0]["label"] in LABELS for e in entries)
    assert body["result"]["summary"]["label"] in LABELS


def test_the_cli_classifies_with_a_repository_model(users_service, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in PHOTOS[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    for target in (PHOTOS[0], folder):  # one image (POST /predict), a folder (a job)
        done = subprocess.run([sys.executable, "-m", "imageclf.client", "classify", "--url", users_service.url,
                               "--model", "parts_onnx", "--json", str(target)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        [output] = json.loads(done.stdout)
        assert output["model"] == "parts_onnx"
        predictions = output.get("predictions") or output["result"]["items"][0]["predictions"]
        assert predictions[0]["label"] in LABELS


def test_a_model_that_is_not_served_is_refused_and_others_name_the_repository(users_service):
    response = httpx.post(users_service.url + "/predict", params={"model": "nope"},
                          files={"image": PHOTOS[0].read_bytes()}, timeout=30)
    assert response.status_code == 400 and ", ".join(SERVED) in response.json()["error"]


def _config_error(repo: Path) -> None:
    write_model(repo, "bad_config", 1, lambda d: keras_cnn(seed=1).save(d / "model.keras"))
    (repo / "bad_config" / "config.json").write_text('{"preprocess": "torch",')


BROKEN = {
    # name: (how it is broken, what the one line must say)
    "missing_file": (lambda repo: write_model(repo, "missing_file", 1, lambda d: None),
                     "missing_file/1: holds no model (expected one of model.keras"),
    "wrong_labels": (lambda repo: write_model(repo, "wrong_labels", 1, lambda d: keras_cnn(seed=1).save(
                         d / "model.keras"), labels=LABELS[:3]),
                     "the model has 4 outputs but {repo}/wrong_labels/labels.txt has 3 labels"),
    "bad_config": (_config_error, "bad_config/config.json: not valid JSON"),
    "load_error": (lambda repo: write_model(repo, "load_error", 1, lambda d: (d / "model.onnx").write_bytes(
                       b"this is not a protobuf")),
                   "load_error/1/model.onnx: cannot be loaded"),
}


@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("broken_repository")
    write_model(repo, "good", 1, lambda d: keras_cnn(seed=2).save(d / "model.keras"))
    for make, _ in BROKEN.values():
        make(repo)
    return repo


def test_broken_models_are_reported_and_the_good_one_keeps_serving(broken_repository, redis_url, tmp_path_factory):
    def reported(url: str) -> bool:
        body = httpx.get(url + "/readyz", timeout=2).json()
        return set(body.get("failed", {})) == set(BROKEN) and body["models"]["good"] == 1

    svc = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/6", "MODEL_REPOSITORY": str(broken_repository),
        "MODELS": ",".join(["good", *BROKEN]), "API_WORKERS": "1", "BATCH_SIZE": "4",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("broken-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "broken-models.log").start(ready=reported)
    try:
        ready = httpx.get(svc.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        models = {m["name"]: m for m in httpx.get(svc.url + "/models", timeout=10).json()["models"]}
        for name, (_, says) in BROKEN.items():
            expected = says.format(repo=broken_repository)
            assert expected in ready.json()["failed"][name] and expected in models[name]["error"], name
            refused = httpx.post(svc.url + "/predict", params={"model": name}, files={"image": PHOTOS[0].read_bytes()},
                                 timeout=30)
            assert refused.status_code == 503 and expected in refused.json()["error"], refused.text
            assert "Retry-After" in refused.headers
        body = predict(svc, PHOTOS[1], "good")
        assert body["model"] == "good" and body["model_version"] == 1
        said = [f"[worker-{name}] model '{name}' cannot be served: " for name in BROKEN]
        assert wait_until(lambda: all(line in svc.log_path.read_text() for line in said), 60, 0.05), svc.log_tail()
        time.sleep(3)  # a restart, if there were one, would show by now
        log = svc.log_path.read_text()
        for name, line in zip(BROKEN, said):  # reported once each, never restarted in a loop
            assert log.count(f"[worker-{name}] starting") == 1, name
            assert log.count(line) == 1, name
    finally:
        assert svc.stop() == 0, svc.log_tail()


@pytest.mark.parametrize("name", ["wrong_labels", "bad_config"])
def test_make_run_with_a_single_broken_model_says_why_in_one_line_and_exits_non_zero(
        name, broken_repository, redis_url, tmp_path):
    svc = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/7", "MODEL_REPOSITORY": str(broken_repository), "MODELS": name,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
    }, log_path=tmp_path / "run.log")
    with pytest.raises(RuntimeError, match="exited early"):
        svc.start(ready_timeout_s=180, ready=lambda url: False)
    assert svc.proc.returncode != 0
    lines = svc.log_path.read_text().splitlines()
    expected = f"[worker-{name}] model '{name}' cannot be served: {str(broken_repository)}/{name}/"
    said = [line for line in lines if line.startswith(expected)]
    assert len(said) == 1 and BROKEN[name][1].format(repo=broken_repository) in said[0], "\n".join(lines[-30:])
    assert sum(line.startswith(f"[worker-{name}] starting") for line in lines) == 1
    svc.log.close()


def _install(repository: Path, name: str, version: int, model) -> None:
    """As a deployment would: write the version folder elsewhere in the repository, then rename it in."""
    staging = Path(tempfile.mkdtemp(dir=repository, prefix=".incoming-"))
    model.save(staging / "model.keras")
    staging.rename(repository / name / str(version))


def test_live_rollout_and_rollback_under_16_clients_without_errors(users_service, repository):
    """v2 appears while 16 clients send without pause: answers switch to v2's, none fails; removing v2 rolls back.

    A v3 that cannot load is marked failed and v1 keeps serving.
    """
    image = PHOTOS[0]
    pixels = np.frombuffer(decode_to_pixels(image.read_bytes(), (160, 160), 10**9), np.uint8)
    batch = pixels.reshape(1, 160, 160, 3).astype("float32") / 255
    expected = {1: keras_cnn(seed=3).predict(batch, verbose=0)[0], 2: keras_cnn(seed=4).predict(batch, verbose=0)[0]}
    answers: list[tuple[float, float, int, int | None, object]] = []  # sent, received, status, version, body
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post(users_service.url + "/predict", params={"model": "rollout", "top": 4},
                                  files={"image": (image.name, image.read_bytes())})
                    answers.append((sent, time.monotonic(), r.status_code, r.json().get("model_version"), r.json()))
                except (httpx.HTTPError, ValueError) as exc:
                    answers.append((sent, time.monotonic(), 0, None, repr(exc)))

    def workers() -> list[dict]:
        models = httpx.get(users_service.url + "/models", timeout=10).json()["models"]
        return next(m for m in models if m["name"] == "rollout")

    rss_one = workers()["workers"][0]["rss_mb"]
    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        added = time.monotonic()
        _install(repository, "rollout", 2, keras_cnn(seed=4))
        assert wait_until(lambda: any(a[3] == 2 for a in answers), 60, 0.05), "no answer from version 2"
        first_v2 = min(a[1] for a in answers if a[3] == 2)
        time.sleep(2)
        removed = time.monotonic()
        shutil.rmtree(repository / "rollout" / "2")
        assert wait_until(lambda: any(a[3] == 1 and a[0] > removed for a in answers), 60, 0.05), \
            "no answer from version 1 again"
        back = min(a[1] for a in answers if a[3] == 1 and a[0] > removed)
        time.sleep(1)
        (repository / "rollout" / "3").mkdir()
        (repository / "rollout" / "3" / "model.keras").write_bytes(b"not a zip")
        assert wait_until(lambda: workers()["versions"].get("3", {}).get("state") == "failed", 30, 0.05), \
            "version 3 was not marked failed"
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    status = workers()
    shutil.rmtree(repository / "rollout" / "3")

    assert [a for a in answers if a[2] != 200] == []
    for *_, version, body in answers:
        assert np.abs(by_class(body) - expected[version]).max() <= 1e-5, (version, body)
    assert all(a[3] == 2 for a in answers if a[0] > first_v2 and a[1] < removed)
    assert all(a[3] == 1 for a in answers if a[0] > back)
    assert status["served_version"] == 1 and "cannot be loaded" in status["versions"]["3"]["error"]
    during = [a[1] - a[0] for a in answers if a[1] >= added and a[0] <= first_v2]
    before = [a[1] - a[0] for a in answers if a[1] < added]
    figures = {"requests": len(answers), "during_switch": len(during), "errors": 0,
               "slowest_during_switch_s": round(max(during), 3), "slowest_before_s": round(max(before), 3),
               "switch_after_s": round(first_v2 - added, 2), "rollback_after_s": round(back - removed, 2),
               "rss_mb_one_version": rss_one, "rss_mb_two_versions": status["workers"][0]["rss_mb_two_versions"]}
    print("rollout:", json.dumps(figures))
    # The switch is one reference swap between batches: no request stalls behind a load.
    assert max(during) < max(before) + 2.0, figures
