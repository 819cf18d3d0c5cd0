"""The prediction log, feedback, live quality and drift on the real service: the shared ImageNet MobileNet served
with its own Redis and its own embedded PostgreSQL, API keys on (two clients and an operator)."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import ProcessGroup, wait_until
from imageclf.models.evaluation import Evaluation, Prediction
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, SHARED, embedded_postgres, labelled_photos, screenshot

MODEL = "mobilenet_v1_0.75"
ALICE, BOB, ADMIN = "alice-key-1", "bob-key-2", "admin-key-3"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    from imageclf.launch.redis_server import start_scratch_redis

    work = tmp_path_factory.mktemp("prediction-log")
    group = ProcessGroup()
    redis_url = start_scratch_redis(group, work)
    service = ServiceProcess({"REDIS_URL": redis_url, "MODEL": MODEL, "MODEL_WEIGHTS": str(MOBILENET_FILE),
                              "CLASS_INDEX": str(CLASS_INDEX), "BATCH_SIZE": "16", "API_WORKERS": "1",
                              "API_THREADS": "32", "DECODER_CONCURRENCY": "1", "API_KEYS": f"{ALICE},{BOB}",
                              "ADMIN_API_KEYS": ADMIN, "UPLOAD_DIR": str(work / "uploads"),
                              "POSTGRES_DATA_DIR": str(work / "postgres")}, work / "service.log").start()
    yield service
    try:
        assert service.stop() == 0, service.log_tail()
    finally:
        group.stop_all()


def _key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def _predict(service: ServiceProcess, image: bytes, key: str = ALICE) -> dict:
    answer = httpx.post(service.url + "/predict", params={"top": 5}, files={"image": ("photo.png", image)},
                        headers=_key(key), timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _photos() -> list[tuple[bytes, dict]]:
    return [((SHARED / row["path"]).read_bytes(), row) for row in labelled_photos()]


def _feedback(service: ServiceProcess, body: object, key: str = ALICE) -> httpx.Response:
    return httpx.post(service.url + "/feedback", json=body, headers=_key(key), timeout=30)


def _written(service: ServiceProcess, entries: list[dict], key: str = ALICE, timeout_s: float = 60) -> httpx.Response:
    """POST /feedback until the rows have reached the database (the writer is asynchronous by design), as a client
    would: again after a 503 (the database restarting) too."""
    deadline = time.monotonic() + timeout_s
    while (answer := _feedback(service, entries, key)).status_code in (404, 503) and time.monotonic() < deadline:
        time.sleep(0.3)
    return answer


def test_feedback_gives_the_offline_evaluations_figures(logged: ServiceProcess):
    photos = _photos()
    work = [photos[i % len(photos)] for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda item: _predict(logged, item[0]), work))
    entries = [{"id": a["id"], "label": int(row["expected_class_id"])} for a, (_, row) in zip(answers, work)]
    answer = _written(logged, entries)
    assert answer.status_code == 200, answer.text
    assert answer.json()["labelled"] == 200

    index = [name for _, name in sorted((int(k), v[1]) for k, v in json.loads(CLASS_INDEX.read_text()).items())]
    expected = Evaluation(index, listed=20)
    for a, (_, row) in zip(answers, work):
        expected.add(Prediction(a["id"], int(row["expected_class_id"]),
                                tuple((p["class_id"], p["probability"]) for p in a["predictions"])))
    figures = httpx.get(logged.url + f"/models/{MODEL}/quality", params={"window": "1h"}, headers=_key(ALICE),
                        timeout=30).json()
    live = figures["versions"]["1"]
    offline = expected.result()
    assert live["labelled"] == 200
    assert live["accuracy"] == offline["accuracy"] and live["top5_accuracy"] == offline["top5_accuracy"]
    assert live["confusion"] == offline["confusion"]
    assert live["per_class"] == offline["per_class"]
    assert live["expected_calibration_error"] == pytest.approx(offline["expected_calibration_error"], abs=1e-4)
    last = httpx.get(logged.url + f"/models/{MODEL}/quality", params={"last": "10"}, headers=_key(ALICE),
                     timeout=30).json()
    assert last["versions"]["1"]["labelled"] == 10

    metrics = httpx.get(logged.url + "/metrics", timeout=30).text
    assert f'imageclf_labelled_total{{model="{MODEL}",version="1"}} 200.0' in metrics
    assert f'imageclf_live_accuracy{{model="{MODEL}",version="1"}} {offline["accuracy"]}' in metrics


def test_labels_are_checked_replaced_and_kept_to_their_key(logged: ServiceProcess):
    image, row = _photos()[0]
    mine = _predict(logged, image, ALICE)["id"]
    assert _written(logged, {"id": mine, "label": row["expected_label"]}).status_code == 200
    unknown = _feedback(logged, {"id": "no-such-request", "label": "tabby"})
    assert unknown.status_code == 404 and "no logged answer" in unknown.json()["error"]
    wrong = _feedback(logged, {"id": mine, "label": "no such class"})
    assert wrong.status_code == 400 and "not a class of the model" in wrong.json()["error"]
    assert _feedback(logged, {"id": mine, "label": 9999}).status_code == 400
    assert _feedback(logged, {"id": mine, "label": "1"}).json()["labels"][0]["class_id"] == 1  # replaced
    stolen = _feedback(logged, {"id": mine, "label": "tabby"}, key=BOB)
    assert stolen.status_code == 404 and "for this key" in stolen.json()["error"]
    unkeyed = httpx.post(logged.url + "/feedback", json={"id": mine, "label": "tabby"}, timeout=30)
    assert unkeyed.status_code == 401
    # A CSV does many at once; a job's image is named by the job and the file.
    csv = f"id,label\n{mine},{row['expected_label']}\n".encode()
    by_csv = httpx.post(logged.url + "/feedback", files={"file": ("labels.csv", csv)}, headers=_key(ALICE), timeout=30)
    assert by_csv.status_code == 200 and by_csv.json()["labels"][0]["label"] == row["expected_label"]


def test_a_jobs_images_are_logged_and_labelled_by_file_name(logged: ServiceProcess):
    photos = _photos()[:3]
    files = [("images", (f"photo{i}.png", image)) for i, (image, _) in enumerate(photos)]
    job = httpx.post(logged.url + "/jobs", files=files, headers=_key(ALICE), timeout=60)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + 120
    while httpx.get(logged.url + f"/result/{job_id}", headers=_key(ALICE), timeout=10).json()["status"] != "SUCCESS":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    csv = "file,label\n" + "".join(f"photo{i}.png,{row['expected_label']}\n" for i, (_, row) in enumerate(photos))
    answer = httpx.post(logged.url + "/feedback", files={"file": ("labels.csv", csv.encode())},
                        data={"job": job_id}, headers=_key(ALICE), timeout=30)
    deadline = time.monotonic() + 60
    while answer.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.3)
        answer = httpx.post(logged.url + "/feedback", files={"file": ("labels.csv", csv.encode())},
                            data={"job": job_id}, headers=_key(ALICE), timeout=30)
    assert answer.status_code == 200, answer.text
    assert [entry["id"] for entry in answer.json()["labels"]] == [f"{job_id}:{i}" for i in range(3)]
    assert _feedback(logged, {"job": job_id, "item": 1, "label": photos[1][1]["expected_label"]}).status_code == 200


def _darkened(image: bytes) -> bytes:
    picture = Image.open(io.BytesIO(image)).convert("RGB").rotate(90, expand=True)
    out = io.BytesIO()
    picture.point(lambda v: int(v * 0.12)).save(out, "PNG")
    return out.getvalue()


def _send_all(service: ServiceProcess, images: list[bytes]) -> float:
    """Send every image; returns when the first was sent (epoch seconds)."""
    started = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda image: _predict(service, image), images))
    return started


def _drift(service: ServiceProcess, since: float) -> dict:
    window = f"{int(time.time() - since) + 1}s"
    body = httpx.get(service.url + f"/models/{MODEL}/quality", params={"window": window}, headers=_key(ALICE),
                     timeout=60).json()
    return body["drift"]["1"]


def test_a_shift_is_flagged_and_the_same_distribution_is_not(logged: ServiceProcess):
    images = [image for image, _ in _photos()]
    reset = httpx.post(logged.url + f"/models/{MODEL}/reference", headers={"Authorization": f"Bearer {ADMIN}"},
                       timeout=30)
    assert reset.status_code == 200, reset.text
    _send_all(logged, [images[i % len(images)] for i in range(250)])  # the new reference
    time.sleep(2)  # the writer's rows land
    same = _send_all(logged, [images[(i * 7) % len(images)] for i in range(250)])
    time.sleep(2)
    unchanged = _drift(logged, same)
    assert unchanged["reference_answers"] >= 250 and unchanged["window_answers"] >= 250
    assert unchanged["drifted"] is False, unchanged
    dark = [_darkened(image) for image in images]
    shifted_since = _send_all(logged, [dark[i % len(dark)] for i in range(250)])
    time.sleep(2)
    shifted = _drift(logged, shifted_since)
    assert shifted["drifted"] is True, {k: v["psi"] for k, v in shifted["signals"].items()}
    assert max(s["psi"] for s in shifted["signals"].values()) >= 0.2
    listed = httpx.get(logged.url + "/models", headers=_key(ALICE), timeout=30).json()["models"]
    verdict = next(m for m in listed if m["name"] == MODEL)["drift"]["1"]
    assert set(verdict["psi"]) == {"confidence", "entropy", "classes"} and verdict["window_answers"] >= 750


def test_the_models_view_shows_live_accuracy_and_drift(logged: ServiceProcess, browser):
    context = browser.new_context(viewport={"width": 1300, "height": 700})
    page = context.new_page()
    page.goto(logged.url + "/#models")
    page.fill("#api-key", ALICE)
    page.wait_for_function(
        "() => { const c = document.querySelector('article[data-model] tr[data-version=\"1\"] td.live');"
        " return c && c.textContent.includes('labelled') && c.textContent.includes('drift'); }", timeout=30_000)
    live = page.locator('tr[data-version="1"] td.live').text_content()
    figures = httpx.get(logged.url + f"/models/{MODEL}/quality", headers=_key(ALICE), timeout=30).json()
    expected = figures["versions"]["1"]
    assert f"right of {expected['labelled']} labelled" in live, live
    screenshot(page, "web-quality")
    context.close()


def _postgres(service: ServiceProcess) -> psutil.Process | None:
    """The service's PostgreSQL server process (not one of its backends), if one runs."""
    assert service.proc is not None
    for process in psutil.Process(service.proc.pid).children(recursive=True):
        try:
            if process.name() == "postgres" and "-D" in process.cmdline() and process.parent().name() != "postgres":
                return process
        except psutil.Error:  # gone meanwhile
            continue
    return None


def test_killing_the_database_fails_no_request_and_its_rows_arrive_later(logged: ServiceProcess):
    image, row = _photos()[0]
    postgres = _postgres(logged)
    assert postgres is not None, "no PostgreSQL under the service"
    os.kill(postgres.pid, signal.SIGKILL)
    answers = [_predict(logged, image) for _ in range(20)]  # every one answered while the database is away
    assert all(a["predictions"] for a in answers)
    assert wait_until(lambda: (now := _postgres(logged)) is not None and now.pid != postgres.pid, 60), \
        "the launcher did not restart PostgreSQL"
    answer = _written(logged, [{"id": a["id"], "label": row["expected_label"]} for a in answers], timeout_s=90)
    assert answer.status_code == 200, answer.text
    assert answer.json()["labelled"] == 20


def test_retention_removes_old_rows(tmp_path: Path):
    """imageclf.core.prediction_log.delete_older_than on a real PostgreSQL (the embedded one)."""
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from imageclf.core import database
    from imageclf.core.prediction_log import delete_older_than, predictions

    with embedded_postgres(tmp_path / "pg") as url:
        engine = sa.create_engine(database.sqlalchemy_url(url))
        now = datetime.now(timezone.utc)
        rows = [{"request_id": f"r{i}", "version": 1, "model": "m", "at": now - timedelta(days=age),
                 "route": "predict", "top_ids": [1], "top_probs": [0.9], "confidence": 0.9, "entropy": 0.1}
                for i, age in enumerate([0, 1, 29, 31, 45, 400])]
        with engine.begin() as connection:
            connection.execute(predictions.insert(), rows)
        assert delete_older_than(engine, 30, chunk=2) == 3
        with engine.connect() as connection:
            kept = sorted(r[0] for r in connection.execute(sa.select(predictions.c.request_id)))
        assert kept == ["r0", "r1", "r2"]
        engine.dispose()
