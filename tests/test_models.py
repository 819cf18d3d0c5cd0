"""Several models at once (MODELS): each on its own queues and workers, chosen per request."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from imageclf.launch.service_process import ServiceProcess
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, SHARED, finished_job, labelled_photos


@pytest.fixture(scope="module")
def two_models(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/4", "MODELS": "mobilenet_v1_0.75,resnet50",
        "MODEL_WEIGHTS": f"mobilenet_v1_0.75={MOBILENET_FILE},resnet50=random", "CLASS_INDEX": str(CLASS_INDEX),
        "API_WORKERS": "1", "BATCH_SIZE": "8", "UPLOAD_DIR": str(tmp_path_factory.mktemp("two-models-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "two-models.log").start()
    yield svc
    assert svc.stop() == 0, svc.log_tail()


def test_models_lists_both_with_their_workers_and_readyz_needs_both(two_models):
    body = httpx.get(two_models.url + "/models", timeout=10).json()
    assert body["default"] == "mobilenet_v1_0.75"
    assert [(m["name"], m["input_size"], m["served_version"], {v: s["state"] for v, s in m["versions"].items()})
            for m in body["models"]] == [("mobilenet_v1_0.75", [224, 224], 1, {"1": "ready"}),
                                         ("resnet50", [224, 224], 1, {"1": "ready"})]
    assert body["models"][0]["labels"] == 1000
    assert body["models"][0]["preprocess"].endswith("mobilenet.preprocess_input")
    assert all(len(m["workers"]) == 1 and m["workers"][0]["model"] == m["name"] for m in body["models"])
    ready = httpx.get(two_models.url + "/readyz", timeout=10).json()
    assert ready["ready"] and ready["models"] == {"mobilenet_v1_0.75": 1, "resnet50": 1}


def test_each_request_goes_to_the_model_it_names(two_models):
    row = labelled_photos()[0]
    image = (SHARED / row["path"]).read_bytes()
    default = httpx.post(two_models.url + "/predict", files={"image": image}, timeout=120).json()
    assert default["model"] == "mobilenet_v1_0.75"
    assert default["predictions"][0]["class_id"] == int(row["expected_class_id"])
    other = httpx.post(two_models.url + "/predict", params={"model": "resnet50", "top": 3}, files={"image": image},
                       timeout=120).json()
    assert other["model"] == "resnet50" and len(other["predictions"]) == 3
    assert other["batch_id"] != default["batch_id"]
    unknown = httpx.post(two_models.url + "/predict", params={"model": "alexnet"}, files={"image": image}, timeout=30)
    assert unknown.status_code == 400
    assert "alexnet" in unknown.json()["error"] and "mobilenet_v1_0.75, resnet50" in unknown.json()["error"]


def test_a_job_runs_on_the_model_it_names(two_models):
    rows = labelled_photos()[:2]
    files = [("images", (r["path"], (SHARED / r["path"]).read_bytes())) for r in rows]
    job = httpx.post(two_models.url + "/jobs", data={"model": "resnet50", "top": "2"}, files=files, timeout=60)
    assert job.status_code == 202, job.text
    body = finished_job(two_models.url, job.headers["Location"])
    assert body["status"] == "SUCCESS" and body["model"] == "resnet50"
    assert [len(i["predictions"]) for i in body["result"]["items"]] == [2, 2]
    assert httpx.post(two_models.url + "/jobs", data={"model": "vgg"}, files=files, timeout=60).status_code == 400
