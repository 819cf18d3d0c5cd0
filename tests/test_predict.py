"""POST /predict and GET /result/<id> against the real service (Redis, worker, gunicorn, MobileNet)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from imageclf.launch.service_process import ServiceProcess
from imageclf.models.images import decode_to_pixels
from tests.helpers import SHARED, labelled_photos

PHOTOS = labelled_photos()


def predict(service: ServiceProcess, path, **params) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(service.url + "/predict", params=params, files={"image": (path.name, f)}, timeout=120)


@pytest.mark.parametrize("row", PHOTOS, ids=[r["path"] for r in PHOTOS])
def test_labelled_photo_top1_and_probabilities_match_in_process_inference(service, reference_model, row):
    path = SHARED / row["path"]
    response = predict(service, path)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["model"] == "mobilenet_v1_0.75"
    top = body["predictions"]
    assert len(top) == 5
    assert (top[0]["class_id"], top[0]["label"]) == (int(row["expected_class_id"]), row["expected_label"])
    assert [p["probability"] for p in top] == sorted((p["probability"] for p in top), reverse=True)

    expected = reference_model(decode_to_pixels(path.read_bytes(), 224, 10**9))
    for p in top:
        assert abs(p["probability"] - float(expected[p["class_id"]])) <= 1e-4, p


def test_32_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(service):
    rows = [PHOTOS[i % len(PHOTOS)] for i in range(32)]

    def one(row):
        return row, predict(service, SHARED / row["path"], top=1)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, rows))
    batches = set()
    for row, response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predictions"][0]["class_id"] == int(row["expected_class_id"]), row["path"]
        batches.add((body["batch_id"], body["batch_size"]))
    assert len(batches) < 32, "every request ran in a model call of its own"
    assert max(size for _, size in batches) > 1
    assert sum(size for _, size in batches) == 32, "batch sizes do not add up to the requests"


def test_result_endpoint_returns_the_same_result(service):
    body = predict(service, SHARED / PHOTOS[0]["path"]).json()
    stored = httpx.get(f"{service.url}/result/{body['id']}", timeout=10)
    assert stored.status_code == 200
    assert stored.json()["status"] == "SUCCESS"
    result = stored.json()["result"]
    assert {k: v for k, v in result.items() if k != "timings"} == {k: v for k, v in body.items() if k != "timings"}
    # The worker's stage timings are stored; the API adds its own (decode, result, total) to live answers.
    assert result["timings"].items() <= body["timings"].items()


def test_answers_carry_a_per_stage_breakdown(service):
    timings = predict(service, SHARED / PHOTOS[0]["path"]).json()["timings"]
    stages = ["decode_ms", "queue_ms", "batch_wait_ms", "inference_ms", "result_ms"]
    assert all(timings[s] >= 0 for s in stages), timings
    assert timings["inference_ms"] > 0
    assert sum(timings[s] for s in stages) <= timings["total_ms"] + 1.0, timings


def test_unknown_id_is_404(service):
    response = httpx.get(f"{service.url}/result/00000000-0000-4000-8000-000000000000", timeout=10)
    assert response.status_code == 404
    assert response.json()["success"] is False and "no task" in response.json()["error"]


def test_tiny_timeout_answers_202_with_a_working_result_url(service):
    row = PHOTOS[1]
    response = predict(service, SHARED / row["path"], timeout=0)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "PENDING" and body["success"] is False
    assert response.headers["Location"] == body["result_url"] == f"/result/{body['id']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polled = httpx.get(service.url + body["result_url"], timeout=10).json()
        if polled["status"] == "SUCCESS":
            assert polled["result"]["predictions"][0]["class_id"] == int(row["expected_class_id"])
            return
        assert polled["status"] in ("PENDING", "STARTED")
        time.sleep(0.1)
    pytest.fail("the result never arrived")


def test_ids_are_random_uuids(service):
    ids = [predict(service, SHARED / PHOTOS[0]["path"], top=1).json()["id"] for _ in range(2)]
    import uuid

    assert all(uuid.UUID(i).version == 4 for i in ids) and ids[0] != ids[1]


def test_flower_is_up(service):
    assert httpx.get(service.flower_url + "/healthcheck", timeout=10).status_code == 200


def test_results_and_ids_expire_and_pixels_are_deleted_once_answered(service, redis_client):
    from imageclf import settings

    task_id = predict(service, SHARED / PHOTOS[0]["path"]).json()["id"]
    for key in (f"celery-task-meta-{task_id}", f"imageclf:issued:{task_id}"):
        assert 0 < redis_client.ttl(key) <= settings.RESULT_TTL_S, key
    assert not redis_client.exists(f"imageclf:pixels:{task_id}")
