"""What an operator watches: Flower sees the batched task, /metrics counts what happened, logs are JSON."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import FLOWER_AUTH, SHARED, labelled_photos


def predict_some(service, n: int) -> list[dict]:
    images = [(SHARED / r["path"]).read_bytes() for r in (labelled_photos() * 2)[:n]]
    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(lambda image: httpx.post(service.url + "/predict", files={"image": image},
                                                           timeout=60), images))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


def test_flower_shows_each_batched_request_with_its_runtime_and_batch(service):
    answers = predict_some(service, 12)
    user, password = FLOWER_AUTH.split(":")
    assert httpx.get(service.flower_url + "/api/tasks", timeout=10).status_code == 401
    deadline = time.monotonic() + 30
    while True:
        tasks = httpx.get(service.flower_url + "/api/tasks", params={"taskname": "classify", "limit": 1000},
                          auth=(user, password), timeout=10).json()
        if all(tasks.get(a["id"], {}).get("state") == "SUCCESS" for a in answers) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for answer in answers:
        task = tasks.get(answer["id"])
        assert task is not None, f"Flower never saw {answer['id']}"
        assert task["name"] == "classify" and task["state"] == "SUCCESS", task
        assert None not in (task["received"], task["started"], task["succeeded"]), task
        assert task["runtime"] > 0 and task["received"] <= task["started"] <= task["succeeded"]
        assert task["result"] == f"version 1: batch of {answer['batch_size']}, inference " \
                                 f"{answer['timings']['inference_ms']:.0f} ms"
        assert task["worker"].startswith("mobilenet_v1_0.75@")


def scrape(service) -> dict[str, dict]:
    """{metric family name: {sample name + labels: value}}."""
    response = httpx.get(service.url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return families


def value(families: dict, family: str, sample: str, **labels: str) -> float:
    return families[family].get((sample, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_batches_and_queues(service):
    before = scrape(service)
    answers = predict_some(service, 8)
    assert httpx.post(service.url + "/predict", files={"image": b"not an image"}, timeout=30).status_code == 415
    after = scrape(service)

    def delta(family: str, sample: str, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    model = answers[0]["model"]
    assert delta("imageclf_http_requests", "imageclf_http_requests_total",
                 route="/predict", method="POST", status="200", model=model, version="1") == 8
    assert delta("imageclf_http_requests", "imageclf_http_requests_total",
                 route="/predict", method="POST", status="415", model=model, version="1") == 1
    assert delta("imageclf_http_request_seconds", "imageclf_http_request_seconds_count", route="/predict",
                 model=model, version="1") == 9
    assert delta("imageclf_images_classified", "imageclf_images_classified_total", model=model, version="1") == 8
    batches = {a["batch_id"]: a["batch_size"] for a in answers}
    assert delta("imageclf_batch_size", "imageclf_batch_size_count", model=model, version="1") == len(batches)
    assert delta("imageclf_batch_size", "imageclf_batch_size_sum", model=model, version="1") == sum(batches.values())
    assert delta("imageclf_inference_seconds", "imageclf_inference_seconds_count", model=model,
                 version="1") == len(batches)
    # Busy time covers each batch's model call and its bookkeeping; request CPU is counted per request.
    inference_s = delta("imageclf_inference_seconds", "imageclf_inference_seconds_sum", model=model, version="1")
    assert inference_s > 0
    assert delta("imageclf_model_busy_seconds", "imageclf_model_busy_seconds_total", model=model) >= inference_s
    assert delta("imageclf_http_request_cpu_seconds", "imageclf_http_request_cpu_seconds_count", route="/predict") == 9
    assert delta("imageclf_http_request_cpu_seconds", "imageclf_http_request_cpu_seconds_sum", route="/predict") > 0
    assert value(after, "imageclf_queue_depth", "imageclf_queue_depth", queue="interactive.mobilenet_v1_0.75") == 0
    assert value(after, "imageclf_workers", "imageclf_workers", role="model", model=model) == 1
    assert value(after, "imageclf_model_version_workers", "imageclf_model_version_workers", model=model,
                 version="1") == 1
    assert value(after, "imageclf_workers", "imageclf_workers", role="decoder", model="") >= 1
    assert value(after, "imageclf_redis_up", "imageclf_redis_up") == 1


def test_every_request_is_one_json_log_line(service):
    import json

    [answer] = predict_some(service, 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in service.log_path.read_text().splitlines()
                 if line.startswith('{"event": "request"')]
        mine = [line for line in lines if line["id"] == answer["id"]]
        batch = [json.loads(line.split("] ", 1)[1]) for line in service.log_path.read_text().splitlines()
                 if f'"batch_id": "{answer["batch_id"]}"' in line]
        if mine and batch:
            break
        time.sleep(0.2)
    assert mine and mine[0]["route"] == "/predict" and mine[0]["status"] == 200 and mine[0]["latency_ms"] > 0
    assert mine[0]["model"] == answer["model"]
    assert batch and batch[0]["size"] == answer["batch_size"] and batch[0]["inference_ms"] > 0


def test_live_responses_conform_to_the_openapi_document(service):
    from jsonschema import Draft202012Validator

    spec = httpx.get(service.url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    Draft202012Validator.check_schema({"$defs": spec["components"]["schemas"]})
    checked: set[tuple[str, str, int]] = set()

    def check(response: httpx.Response, path: str, method: str) -> dict:
        documented = spec["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, f"{method} {path} answered undocumented {response.status_code}"
        schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
        validator = Draft202012Validator({**schema, "components": spec["components"]})
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, f"{method} {path} {response.status_code}: {errors[:3]}"
        checked.add((method, path, response.status_code))
        return response.json()

    image = (SHARED / labelled_photos()[0]["path"]).read_bytes()
    ok = check(httpx.post(service.url + "/predict", files={"image": image}, timeout=60), "/predict", "post")
    check(httpx.post(service.url + "/predict", files={"image": b"text"}, timeout=30), "/predict", "post")
    check(httpx.post(service.url + "/predict", params={"model": "nope"}, files={"image": image}, timeout=30),
          "/predict", "post")
    queued = check(httpx.post(service.url + "/predict", params={"timeout": 0}, files={"image": image}, timeout=30),
                   "/predict", "post")
    check(httpx.get(service.url + f"/result/{ok['id']}", timeout=10), "/result/{id}", "get")
    check(httpx.get(service.url + "/result/never-issued", timeout=10), "/result/{id}", "get")
    job = check(httpx.post(service.url + "/jobs", files=[("images", ("a.jpg", image)), ("images", ("b.txt", b"x"))],
                           timeout=60), "/jobs", "post")
    video = (SHARED / "video" / "realshort.mp4").read_bytes()
    clip = check(httpx.post(service.url + "/jobs", files={"video": ("r.mp4", video)}, timeout=60), "/jobs", "post")
    check(httpx.post(service.url + "/jobs", timeout=30), "/jobs", "post")
    deadline = time.monotonic() + 60
    for task_id in (queued["id"], job["id"], clip["id"]):
        while httpx.get(service.url + f"/result/{task_id}", timeout=10).json()["status"] not in (
                "SUCCESS", "FAILURE", "REVOKED"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        check(httpx.get(service.url + f"/result/{task_id}", timeout=10), "/result/{id}", "get")
    check(httpx.delete(service.url + f"/jobs/{job['id']}", timeout=10), "/jobs/{id}", "delete")
    check(httpx.get(service.url + "/models", timeout=10), "/models", "get")
    check(httpx.get(service.url + "/healthz", timeout=10), "/healthz", "get")
    check(httpx.get(service.url + "/readyz", timeout=10), "/readyz", "get")
    assert {s for m, p, s in checked if p == "/predict"} == {200, 202, 400, 415}

    docs = httpx.get(service.url + "/docs", timeout=10)
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert all(path in docs.text for path in spec["paths"])
