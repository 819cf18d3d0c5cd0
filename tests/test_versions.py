"""Several versions of a user's model served at once: pinned versions, a canary share, shadow traffic with a
measured agreement, per-version figures, and the control API that changes all of it live.

The model repository is made here: `plants` classifies an image's mean colour (tests/user_models.py), version 1
and 2 with different weights, version 3 an identical copy of version 2. Every expected figure is computed
in-process with Keras on the very pixels the service makes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from imageclf.core.readiness import live_workers
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from imageclf.models.images import decode_to_pixels
from tests.helpers import screenshot
from tests.user_models import LABELS, colour_classifier, coloured_images, write_model

PLAIN, ADMIN = "plain-key", "admin-key"
AS_PLAIN, AS_ADMIN = {"X-API-Key": PLAIN}, {"Authorization": f"Bearer {ADMIN}"}
SEEDS = {1: 1, 2: 2, 3: 2}  # version → weights; 3 is a copy of 2
IMAGES = coloured_images(40)
VISIBILITY_S = 20  # a killed batch is handed out again this soon; above any wait in this module


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("versions_repository")
    for version, seed in SEEDS.items():
        write_model(repo, "plants", version, lambda d, seed=seed: colour_classifier(seed).save(d / "model.keras"),
                    config={"version_policy": {"all": True}})
    return repo


@pytest.fixture(scope="module")
def svc(repository: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/8", "MODEL_REPOSITORY": str(repository), "MODELS": "plants",
        "MODEL_POLL_S": "0.5", "API_WORKERS": "1", "BATCH_SIZE": "8", "API_KEYS": PLAIN, "ADMIN_API_KEYS": ADMIN,
        "VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("versions-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "versions.log").start()
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def expected() -> dict[int, np.ndarray]:
    """Each version's probabilities for IMAGES, as the service's pixels give them."""
    pixels = np.stack([np.frombuffer(decode_to_pixels(data, (160, 160), 10**9), np.uint8).reshape(160, 160, 3)
                       for data in IMAGES]).astype("float32") / 255
    return {version: colour_classifier(seed).predict(pixels, verbose=0) for version, seed in SEEDS.items()}


def plants(svc: ServiceProcess) -> dict:
    models = httpx.get(svc.url + "/models", headers=AS_PLAIN, timeout=10).json()["models"]
    return next(m for m in models if m["name"] == "plants")


def set_policy(svc: ServiceProcess, **policy) -> dict:
    """PUT the policy with the admin key; return once the worker applies it and the API's routing cache turned."""
    response = httpx.put(svc.url + "/models/plants/policy", json=policy, headers=AS_ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    applied = response.json()["policy"]

    def settled() -> bool:
        entry = plants(svc)
        return entry.get("policy") == applied and all(s["state"] in ("ready", "available", "failed")
                                                      for s in entry["versions"].values())
    assert wait_until(settled, 60, 0.1), plants(svc)
    time.sleep(1.2)  # the API rereads routing every second (imageclf.core.model_records.CACHE_S)
    return plants(svc)


def predict(http: httpx.Client, svc: ServiceProcess, index: int, **params) -> httpx.Response:
    return http.post(svc.url + "/predict", params={"top": 4, **params}, headers=AS_PLAIN,
                     files={"image": ("x.png", IMAGES[index % len(IMAGES)])})


def by_class(body: dict) -> np.ndarray:
    row = np.zeros(len(LABELS), np.float32)
    for p in body["predictions"]:
        row[p["class_id"]] = p["probability"]
    return row


def test_each_served_version_answers_with_exactly_its_own_probabilities(svc, expected):
    entry = set_policy(svc, version_policy={"all": True}, traffic=None, shadow=None)
    assert {v: s["state"] for v, s in entry["versions"].items()} == {"1": "ready", "2": "ready", "3": "ready"}
    assert entry["served_version"] == 3 and all(entry["versions"][v]["rss_mb"] >= 0 for v in "123")
    with httpx.Client(timeout=60) as http:
        for version in (1, 2, 3):
            for index in (0, 7):
                body = predict(http, svc, index, version=version).json()
                assert body["model_version"] == version
                assert np.abs(by_class(body) - expected[version][index]).max() <= 1e-5
        form = http.post(svc.url + "/predict", params={"top": 4}, data={"version": "1"}, headers=AS_PLAIN,
                         files={"image": ("x.png", IMAGES[3])}).json()
        assert form["model_version"] == 1 and np.abs(by_class(form) - expected[1][3]).max() <= 1e-5
        missing = predict(http, svc, 0, version=9)
        assert missing.status_code == 404 and "served versions: 1, 2, 3" in missing.json()["error"]
        assert predict(http, svc, 0, version="two").status_code == 400
        assert predict(http, svc, 0, version="0").status_code == 400

    for module, client in ((httpclient, httpclient.InferenceServerClient(svc.url.removeprefix("http://"))),
                           (grpcclient, grpcclient.InferenceServerClient(svc.grpc_url))):
        tensor = module.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([IMAGES[5]], dtype=np.object_))
        answer = client.infer("plants", [tensor], model_version="1", headers={"x-api-key": PLAIN})  # gRPC: lower case
        assert str(answer.get_response()["model_version"] if module is httpclient else
                   answer.get_response().model_version) == "1"
        assert np.abs(answer.as_numpy("probabilities")[0] - expected[1][5]).max() <= 1e-5
        with pytest.raises(Exception, match="version 7 is not served"):
            client.infer("plants", [tensor], model_version="7", headers={"x-api-key": PLAIN})


def test_a_job_runs_every_item_on_the_version_it_names(svc, expected):
    set_policy(svc, version_policy={"all": True}, traffic=None, shadow=None)
    files = [("images", (f"{i}.png", IMAGES[i])) for i in range(6)]
    response = httpx.post(svc.url + "/jobs", data={"version": "1", "top": "4"}, files=files, headers=AS_PLAIN,
                          timeout=60)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while (body := httpx.get(svc.url + response.json()["result_url"], headers=AS_PLAIN, timeout=10).json()
           )["status"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    items = body["result"]["items"]
    assert body["status"] == "SUCCESS" and len(items) == 6 and all(i["model_version"] == 1 for i in items)
    for item in items:
        index = int(item["name"].split(".")[0])
        assert np.abs(by_class(item) - expected[1][index]).max() <= 1e-5
    refused = httpx.post(svc.url + "/jobs", data={"version": "8"}, files=files[:1], headers=AS_PLAIN, timeout=30)
    assert refused.status_code == 404 and "served versions" in refused.json()["error"]


def test_the_canary_share_holds_within_3_points_over_2000_requests(svc):
    entry = set_policy(svc, version_policy={"all": True}, traffic={"default": 1, "2": 10}, shadow=None)
    assert entry["routing"]["default"] == 1 and entry["routing"]["shares"] == {"1": 90.0, "2": 10.0}
    assert (entry["versions"]["1"]["share"], entry["versions"]["2"]["share"]) == (90.0, 10.0)
    versions: Counter = Counter()
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(timeout=60) as http:
            for n in range(125):
                response = predict(http, svc, offset + n)
                with lock:
                    versions[response.json().get("model_version") if response.status_code == 200 else "error"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(versions.values()) == 2000 and set(versions) <= {1, 2}, versions
    share = 100 * versions[2] / 2000
    print(f"canary: {versions[2]} of 2000 to version 2 ({share:.2f}%, set to 10%)")
    assert abs(share - 10) <= 3


def _shadow_record(svc: ServiceProcess, version: int, against: int) -> dict | None:
    pairs = plants(svc)["versions"][str(version)].get("shadow", [])
    return next((p for p in pairs if p["against"] == against), None)


def _agreement_metric(svc: ServiceProcess, version: int, against: int) -> float | None:
    for family in text_string_to_metric_families(httpx.get(svc.url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "imageclf_shadow_agreement_ratio" and sample.labels == {
                    "model": "plants", "version": str(version), "against": str(against)}:
                return sample.value
    return None


@pytest.mark.parametrize("shadow,agreement", [(3, "identical"), (1, "measured")])
def test_a_shadow_is_compared_never_returned(svc, expected, shadow, agreement):
    """Version 3 (a copy of the default, 2) agrees on every image; version 1 as often as Keras says it does."""
    set_policy(svc, version_policy={"all": True}, traffic={"default": 2}, shadow={"version": shadow, "share": 100})
    before = (_shadow_record(svc, shadow, 2) or {}).get("compared", 0)
    with httpx.Client(timeout=60) as http:
        answers = [predict(http, svc, i).json() for i in range(len(IMAGES))]
    assert all(a["model_version"] == 2 for a in answers)
    assert wait_until(lambda: (_shadow_record(svc, shadow, 2) or {}).get("compared", 0) - before == len(IMAGES),
                      60, 0.1), _shadow_record(svc, shadow, 2)
    record = _shadow_record(svc, shadow, 2)
    assert before == 0, "each pair's record starts with this test"
    top1 = expected[2].argmax(axis=1)
    agrees = float(np.mean(expected[shadow].argmax(axis=1) == top1))
    mean_dp = float(np.mean(np.abs(expected[shadow][np.arange(len(IMAGES)), top1]
                                   - expected[2][np.arange(len(IMAGES)), top1])))
    if agreement == "identical":
        assert agrees == 1.0 and record["top1_agreement"] == 1.0 and record["mean_abs_dp"] <= 1e-6
    else:
        assert 0 < agrees < 1
        assert record["top1_agreement"] == pytest.approx(agrees, abs=1e-9)
        assert record["mean_abs_dp"] == pytest.approx(mean_dp, abs=1e-5)
    times = record["inference_ms_per_image"]
    assert times[str(shadow)]["p50"] > 0 and times["2"]["p95"] >= times["2"]["p50"] > 0
    assert _agreement_metric(svc, shadow, 2) == pytest.approx(record["top1_agreement"])
    print(f"shadow {shadow} against 2: {record}")


def test_the_control_api_takes_admin_keys_only_and_refuses_unknown_versions(svc, service):
    for method, path in (("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/plants/unload"),
                         ("PUT", "/models/plants/policy"), ("POST", "/models/plants/versions")):
        plain = httpx.request(method, svc.url + path, headers=AS_PLAIN, json={}, timeout=10)
        assert plain.status_code == 403 and "admin key" in plain.json()["error"], (path, plain.text)
        assert httpx.request(method, svc.url + path, timeout=10).status_code == 401
        off = httpx.request(method, service.url + path, json={}, timeout=10)  # a service without ADMIN_API_KEYS
        assert off.status_code == 403 and "set ADMIN_API_KEYS" in off.json()["error"]
    assert httpx.get(svc.url + "/models", headers=AS_ADMIN, timeout=10).status_code == 401  # not a plain key

    current = set_policy(svc, version_policy={"all": True}, traffic={"default": 2}, shadow=None)["policy"]
    for bad, why in (({"traffic": {"7": 10}}, "7"), ({"shadow": {"version": 9, "share": 5}}, "9"),
                     ({"version_policy": {"specific": [1, 2]}, "traffic": {"3": 5}}, "3"),
                     ({"traffic": {"2": 140}}, "percentage"), ({"version_policy": {"newest": 1}}, "version_policy"),
                     ({"colour": 1}, "unknown key")):
        refused = httpx.put(svc.url + "/models/plants/policy", json=bad, headers=AS_ADMIN, timeout=10)
        assert refused.status_code == 400 and why in refused.json()["error"], (bad, refused.text)
    for path, method in (("/models/plants/policy", "PUT"), ("/v2/repository/index", "POST")):
        for body, why in ((b"[" * 20000 + b"]" * 20000, "nests 20000 levels deep"), (b"{oops", "not valid JSON"),
                          (b'{"ready": "yes"}' if method == "POST" else b"[]", "JSON object")):
            refused = httpx.request(method, svc.url + path, content=body, headers=AS_ADMIN, timeout=10)
            assert refused.status_code == 400 and why in refused.json()["error"], (path, body[:20], refused.text)
    time.sleep(1.5)
    assert plants(svc)["policy"] == current

    index = httpx.post(svc.url + "/v2/repository/index", headers=AS_ADMIN, timeout=10).json()
    assert sorted((e["name"], e["version"], e["state"]) for e in index) == [
        ("plants", "1", "READY"), ("plants", "2", "READY"), ("plants", "3", "READY")]


def test_a_hand_edit_of_config_json_is_applied_and_a_bad_one_is_reported(svc, repository):
    """Files are the source of truth: an edit is applied within MODEL_POLL_S; a broken one is shown in GET /models
    while the last good policy keeps serving."""
    set_policy(svc, version_policy={"all": True}, traffic={"default": 1}, shadow=None)
    config = repository / "plants" / "config.json"
    good = json.loads(config.read_text())
    config.write_text(json.dumps({**good, "traffic": {"default": 2}}))
    assert wait_until(lambda: plants(svc)["routing"]["default"] == 2, 30, 0.1), plants(svc)["routing"]
    config.write_text(json.dumps({**good, "traffic": {"default": 2, "3": 250}}))
    assert wait_until(lambda: "percentage from 0 to 100" in (plants(svc).get("policy_error") or ""), 30, 0.1)
    time.sleep(1.2)
    entry = plants(svc)
    assert entry["routing"]["default"] == 2 and entry["routing"]["shares"] == {"2": 100.0}
    with httpx.Client(timeout=60) as http:
        assert {predict(http, svc, i).json()["model_version"] for i in range(10)} == {2}
    config.write_text(json.dumps(good))
    assert wait_until(lambda: plants(svc)["routing"]["default"] == 1 and not plants(svc).get("policy_error"), 30)


def test_unload_refuses_requests_and_load_serves_again(svc):
    set_policy(svc, version_policy={"all": True}, traffic=None, shadow=None)
    assert httpx.post(svc.url + "/v2/repository/models/plants/unload", headers=AS_ADMIN, timeout=90).status_code == 200
    time.sleep(1.2)
    with httpx.Client(timeout=60) as http:
        refused = predict(http, svc, 0)
        assert refused.status_code == 503 and "unloaded by admin key" in refused.json()["error"]
        assert {s["state"] for s in plants(svc)["versions"].values()} == {"unloaded"}
        assert httpx.post(svc.url + "/v2/repository/models/plants/load", headers=AS_ADMIN,
                          timeout=90).status_code == 200
        time.sleep(1.2)
        assert predict(http, svc, 0).json()["model_version"] == 3


def test_a_version_that_fails_to_load_never_gets_traffic(svc, repository):
    (repository / "plants" / "4").mkdir()
    (repository / "plants" / "4" / "model.keras").write_bytes(b"not a zip")
    try:
        assert wait_until(lambda: plants(svc)["versions"].get("4", {}).get("state") == "failed", 60, 0.1)
        entry = set_policy(svc, version_policy={"all": True}, traffic={"default": 1, "4": 50}, shadow=None)
        assert "cannot be loaded" in entry["versions"]["4"]["error"]
        assert entry["routing"]["shares"] == {"1": 100.0}
        assert any("version 4 is not ready" in note for note in entry["routing"]["notes"])
        with httpx.Client(timeout=60) as http:
            assert {predict(http, svc, i).json()["model_version"] for i in range(30)} == {1}
            assert predict(http, svc, 0, version=4).status_code == 404
    finally:
        shutil.rmtree(repository / "plants" / "4")
        set_policy(svc, version_policy={"all": True}, traffic=None, shadow=None)


def test_a_version_uploaded_through_the_control_api_is_checked_then_served(svc, repository, tmp_path):
    colour_classifier(5).save(tmp_path / "v4.keras")
    bad = httpx.post(svc.url + "/models/plants/versions", headers=AS_ADMIN, timeout=300,
                     files={"model": ("broken.keras", b"not a zip")})
    assert bad.status_code == 400 and "cannot be loaded" in bad.json()["error"], bad.text
    assert not (repository / "plants" / "4").exists()
    added = httpx.post(svc.url + "/models/plants/versions", headers=AS_ADMIN, timeout=300,
                       files={"model": ("v4.keras", (tmp_path / "v4.keras").read_bytes()),
                              "sample": ("s.png", IMAGES[0])})
    assert added.status_code == 201 and added.json()["version"] == 4, added.text
    try:
        assert wait_until(lambda: plants(svc)["versions"].get("4", {}).get("state") == "ready", 90, 0.1)
        time.sleep(1.2)
        pixels = np.frombuffer(decode_to_pixels(IMAGES[9], (160, 160), 10**9), np.uint8)
        reference = colour_classifier(5).predict(pixels.reshape(1, 160, 160, 3).astype("float32") / 255, verbose=0)
        with httpx.Client(timeout=60) as http:
            body = predict(http, svc, 9, version=4).json()
        assert body["model_version"] == 4 and np.abs(by_class(body) - reference[0]).max() <= 1e-5
    finally:
        shutil.rmtree(repository / "plants" / "4")
    assert "new version" in svc.log_path.read_text() and "admin key" in svc.log_path.read_text()


def test_policy_changes_under_16_clients_fail_no_request(svc, repository):
    """Canary, promote, roll back, a version leaving and coming back, a refused policy: 0 failures, and every
    answer comes from a version the policy of its moment allowed."""
    set_policy(svc, version_policy={"all": True}, traffic={"default": 1}, shadow=None)
    answers: list[tuple[float, int, int | None]] = []  # sent, status, version
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = offset
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = predict(http, svc, n)
                    answers.append((sent, response.status_code, response.json().get("model_version")))
                except (httpx.HTTPError, ValueError):
                    answers.append((sent, 0, None))
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        steps = [dict(traffic={"default": 1, "2": 50}), dict(traffic={"default": 2}),
                 dict(traffic={"default": 1}, shadow={"version": 2, "share": 100}),
                 dict(version_policy={"specific": [1, 2]}, shadow=None),
                 dict(version_policy={"all": True})]
        for step in steps:
            set_policy(svc, **step)
            time.sleep(1)
        refused = httpx.put(svc.url + "/models/plants/policy", json={"traffic": {"9": 1}}, headers=AS_ADMIN)
        assert refused.status_code == 400
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = Counter(status for _, status, _ in answers)
    print(f"policy changes under load: {len(answers)} requests, statuses {dict(statuses)}, "
          f"versions {dict(Counter(v for *_, v in answers))}")
    assert statuses == {200: len(answers)} and len(answers) > 100
    assert {v for *_, v in answers} <= {1, 2, 3}


def test_kill_9_of_the_model_process_mid_rollout_loses_nothing(svc, redis_url):
    """Requests queued while the canary share moves and the model process is killed -9: each one is answered,
    by version 1 or 2, the ones sent while it was down by its successor once it has loaded every version (a
    batch killed mid-run is handed out again: tests/test_worker_crash.py times that case on a slow model)."""
    set_policy(svc, version_policy={"all": True}, traffic={"default": 1}, shadow=None)
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/8")
    before = [w["pid"] for w in live_workers(client) if w.get("role") == "model"]
    assert len(before) == 1
    ids = []
    with httpx.Client(timeout=60) as http:
        for n in range(60):
            if n == 20:
                assert httpx.put(svc.url + "/models/plants/policy", json={"traffic": {"default": 1, "2": 50}},
                                 headers=AS_ADMIN, timeout=30).status_code == 200
            if n == 40:
                os.kill(before[0], signal.SIGKILL)  # the 20 sent from now on wait for its successor
            response = predict(http, svc, n, timeout=0)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        done: dict[str, dict] = {}
        deadline = time.monotonic() + 3 * VISIBILITY_S + 60
        while len(done) < len(ids) and time.monotonic() < deadline:
            for task_id in set(ids) - set(done):
                body = http.get(f"{svc.url}/result/{task_id}", headers=AS_PLAIN).json()
                if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                    done[task_id] = body
            time.sleep(0.3)
    assert len(done) == len(ids), f"{len(ids) - len(done)} of {len(ids)} requests never answered"
    assert {b["status"] for b in done.values()} == {"SUCCESS"}
    assert {b["result"]["model_version"] for b in done.values()} <= {1, 2}
    # The killed process's heartbeat lingers until its key expires: look for its successor's.
    assert wait_until(lambda: {w["pid"] for w in live_workers(client) if w.get("role") == "model"} - set(before), 60)
    print(f"kill -9 mid-rollout: {len(done)} answered, redelivered "
          f"{sum(b['result'].get('deliveries', 1) > 1 for b in done.values())}")


def test_the_models_view_moves_a_canary_share_promotes_and_rolls_back(svc, browser):
    """In Chromium: the versions with their states and shadow agreement; an admin key moves the share of v2,
    promotes v3 and rolls back to v1, each after a confirmation; a plain key is refused with the reason."""
    set_policy(svc, version_policy={"all": True}, traffic={"default": 1}, shadow={"version": 2, "share": 100})
    compared = (_shadow_record(svc, 2, 1) or {}).get("compared", 0)
    with httpx.Client(timeout=60) as http:
        assert all(predict(http, svc, i).status_code == 200 for i in range(5))
    assert wait_until(lambda: (_shadow_record(svc, 2, 1) or {}).get("compared", 0) == compared + 5, 60, 0.1)
    set_policy(svc, version_policy={"all": True}, traffic={"default": 1}, shadow=None)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    questions: list[str] = []
    page.on("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.goto(svc.url + "/#models")
    page.fill("#api-key", PLAIN)
    page.fill("#admin-key", ADMIN)

    def row(version: int):
        return page.locator(f'article[data-model="plants"] tr[data-version="{version}"]')

    def shown(version: int, cell: str, text: str) -> None:
        page.wait_for_function(
            "([v, cell, text]) => { const r = document.querySelector(`article[data-model=plants] "
            "tr[data-version='${v}']`); return r && r.querySelector(cell).textContent.includes(text); }",
            arg=[str(version), cell, text], timeout=30_000)

    shown(1, "th", "v1 (default)")
    shown(1, "td.share", "100%")
    assert f"top-1 agreement over {compared + 5}" in row(2).locator("td.shadow").text_content()
    page.fill("#share-plants-2", "25")
    row(2).get_by_role("button", name="Set share").click()
    shown(2, "td.share", "25%")
    shown(1, "td.share", "75%")
    assert plants(svc)["routing"]["shares"] == {"1": 75.0, "2": 25.0}
    assert questions[-1].startswith("Send 25% of plants")
    screenshot(page, "web-models")

    row(3).get_by_role("button", name="Promote v3").click()
    shown(3, "th", "v3 (default)")
    shown(3, "td.share", "100%")
    row(1).get_by_role("button", name="Roll back to v1").click()
    shown(1, "th", "v1 (default)")
    assert plants(svc)["routing"]["shares"] == {"1": 100.0} and len(questions) == 3

    page.fill("#admin-key", PLAIN)
    row(2).get_by_role("button", name="Set share").click()
    page.locator("#models-error").wait_for(state="visible", timeout=10_000)
    assert "needs an admin key" in page.locator("#models-error").text_content()
    assert plants(svc)["routing"]["shares"] == {"1": 100.0}
    context.close()


@pytest.fixture(scope="module")
def shadow_worker_svc(repository: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[ServiceProcess]:
    """The same model with SHADOW_DEVICE=cpu: shadow copies go to a shadow worker of their own."""
    repo = tmp_path_factory.mktemp("shadow_worker_repository")
    shutil.copytree(repository / "plants", repo / "plants", ignore=shutil.ignore_patterns(".*"))
    (repo / "plants" / "config.json").write_text(json.dumps({"version_policy": {"all": True},
                                                             "traffic": {"default": 2},
                                                             "shadow": {"version": 3, "share": 100}}))
    service = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/9", "MODEL_REPOSITORY": str(repo), "MODELS": "plants",
        "MODEL_POLL_S": "0.5", "API_WORKERS": "1", "BATCH_SIZE": "8", "SHADOW_DEVICE": "cpu",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("shadow-worker-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "shadow-worker.log").start()
    yield service
    assert service.stop() == 0, service.log_tail()


def test_with_a_shadow_worker_the_copies_run_there_and_not_on_the_model_worker(shadow_worker_svc):
    svc = shadow_worker_svc

    def entry() -> dict:
        return next(m for m in httpx.get(svc.url + "/models", timeout=10).json()["models"] if m["name"] == "plants")

    assert wait_until(lambda: sorted(w["role"] for w in entry()["workers"]) == ["model", "shadow"], 120, 0.2)
    with httpx.Client(timeout=60) as http:
        answers = [http.post(svc.url + "/predict", params={"top": 4}, files={"image": ("x.png", IMAGES[i])}).json()
                   for i in range(20)]
    assert {a["model_version"] for a in answers} == {2}

    def compared() -> int:
        pairs = entry()["versions"]["3"].get("shadow", [])
        return next((p["compared"] for p in pairs if p["against"] == 2), 0)

    assert wait_until(lambda: compared() == 20, 60, 0.2)
    pair = next(p for p in entry()["versions"]["3"]["shadow"] if p["against"] == 2)
    assert pair["top1_agreement"] == 1.0 and pair["skipped"] == 0
    batches = [line for line in svc.log_path.read_text().splitlines() if '"event": "batch"' in line]
    shadow_batches = [line for line in batches if '"worker": "shadow"' in line]
    assert shadow_batches and all('"model_version": 3' in line for line in shadow_batches)
    assert not [line for line in batches if '"worker": "model"' in line and '"model_version": 3' in line]
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    assert 'imageclf_queue_depth{queue="shadow.plants"} 0.0' in metrics
    assert 'imageclf_workers{model="plants",role="shadow"} 1.0' in metrics
