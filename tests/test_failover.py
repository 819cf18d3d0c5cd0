"""Losing the Redis master: real Sentinels, kill -9 while clients send and a video job runs.

A master, a replica and three Sentinels from the Redis binary the project ships; the service
started as `make run` does with REDIS_URL naming the Sentinels. Every request that was told
200 or 202 must get its answer, the API must answer 503 + Retry-After (never 500, never past a
request's timeout) while there is no master, and the same processes must serve again after
the promotion, with no restart.
"""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest

from imageclf.launch.redis_server import SentinelCluster
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from tests.helpers import CLASS_INDEX, FLOWER_AUTH, MOBILENET_FILE, SHARED, finished_job, labelled_photos

CLIENTS = 6
TIMEOUT_S = 3  # each /predict's own timeout: past it, 202 and the result URL (some do, during the failover)
PHOTOS = labelled_photos()[:6]


@pytest.fixture()
def sentinel_service(tmp_path):
    cluster = SentinelCluster(str(tmp_path / "redis")).start()
    service = ServiceProcess(env={
        "REDIS_URL": cluster.url, "REDIS_SENTINEL_MASTER": cluster.name,
        "MODEL": "mobilenet_v1_0.75", "MODEL_WEIGHTS": str(MOBILENET_FILE), "CLASS_INDEX": str(CLASS_INDEX),
        "BATCH_SIZE": "8", "API_WORKERS": "1", "FLOWER_BASIC_AUTH": FLOWER_AUTH,
        # Messages a worker held when its connection died come back after this (the default is 300 s).
        "VISIBILITY_TIMEOUT_S": "20",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
    }, log_path=tmp_path / "service.log")
    try:
        service.start(240)
        yield cluster, service
    finally:
        if service.proc is not None:
            service.stop()
        cluster.stop()


def test_killing_the_master_loses_no_accepted_request_and_needs_no_restart(sentinel_service):
    cluster, service = sentinel_service
    url = service.url
    worker_pid = httpx.get(url + "/models", timeout=10).json()["models"][0]["workers"][0]["pid"]
    video = (SHARED / "video" / "cockatoo.mp4").read_bytes()
    job = httpx.post(url + "/jobs", files={"video": ("cockatoo.mp4", video)}, data={"fps": "2"}, timeout=60)
    assert job.status_code == 202, job.text

    outcomes: list[dict] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=TIMEOUT_S + 30) as http:
            while not stop.is_set():
                row = random.choice(PHOTOS)
                sent = time.monotonic()
                try:
                    response = http.post(url + "/predict", params={"timeout": TIMEOUT_S},
                                         files={"image": (SHARED / row["path"]).read_bytes()})
                except httpx.HTTPError as exc:
                    outcomes.append({"sent": sent, "took": time.monotonic() - sent, "error": repr(exc)})
                    continue
                body = response.json()
                outcomes.append({"sent": sent, "took": time.monotonic() - sent, "status": response.status_code,
                                 "retry_after": response.headers.get("Retry-After"), "body": body,
                                 "expected": int(row["expected_class_id"])})
                if response.status_code == 503:
                    time.sleep(0.2)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(6)
        old_master = cluster.master_address()
        killed = time.monotonic()
        lost = cluster.kill_master()
        assert wait_until(lambda: cluster.master_address() not in (None, old_master), 60), "no replica was promoted"
        promoted = time.monotonic()
        # The lost node comes back (a supervisor or Kubernetes restarts it) and becomes the new master's
        # replica: until then no replica can confirm a write, and the API refuses new work with 503.
        cluster.restart(lost)
        assert wait_until(lambda: any(o.get("status") == 200 and o["sent"] > promoted for o in outcomes), 90), \
            "/predict did not answer again after the promotion"
        recovered = min(o["sent"] + o["took"] for o in outcomes if o.get("status") == 200 and o["sent"] > promoted)
        time.sleep(8)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT_S + 60)

    statuses = [o.get("status", "error") for o in outcomes]
    assert "error" not in statuses, [o for o in outcomes if "error" in o][:3]
    assert set(statuses) <= {200, 202, 503}, sorted(set(statuses))
    assert all(o["retry_after"] for o in outcomes if o["status"] == 503)
    assert max(o["took"] for o in outcomes) < TIMEOUT_S + 10, "a request hung past its timeout"
    for o in outcomes:
        if o["status"] == 200:
            assert o["body"]["predictions"][0]["class_id"] == o["expected"]
    accepted = [o for o in outcomes if o["status"] == 202]

    def answered(o: dict) -> bool:
        meta = httpx.get(url + o["body"]["result_url"], timeout=10).json()
        return meta["status"] == "SUCCESS" and meta["result"]["predictions"][0]["class_id"] == o["expected"]

    assert wait_until(lambda: all(answered(o) for o in accepted), 120), \
        f"{sum(not answered(o) for o in accepted)} of {len(accepted)} accepted requests were never answered"
    result = finished_job(url, job.json()["result_url"], timeout_s=180)
    assert result["status"] == "SUCCESS" and result["result"]["summary"]["label"] == "sulphur-crested_cockatoo"

    after = httpx.get(url + "/models", timeout=10).json()["models"][0]["workers"]
    assert [w["pid"] for w in after] == [worker_pid], "the model worker was restarted"
    assert service.proc.poll() is None
    print("FAILOVER " + json.dumps({
        "requests": len(outcomes), "answered_200": statuses.count(200), "accepted_202": len(accepted),
        "refused_503": statuses.count(503), "lost": 0,
        "promotion_s": round(promoted - killed, 2), "recovery_after_promotion_s": round(recovered - promoted, 2),
    }))
