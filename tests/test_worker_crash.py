"""The model's process is killed (-9) mid-batch: every accepted request is still answered, and a
request whose worker dies every time it runs is failed after MAX_DELIVERIES instead of looping.

A service of its own: ResNet50 with random weights (slow enough on a CPU that a kill
lands mid-run), a short visibility timeout (how long the broker waits before handing an
unacknowledged task out again) and a batch window. The model process is frozen while
the requests arrive, resumed, and killed as soon as it has spent CPU on the batch: a
batch the process never started would simply be given to its successor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import redis

from imageclf.core.readiness import live_workers
from imageclf.core.request_watch import count_resent
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from tests.helpers import CLASS_INDEX, SHARED, labelled_photos

VISIBILITY_S = 15  # the default: a live worker renews its tasks, so only a dead one's come back


@pytest.fixture(scope="module")
def crashable(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, redis.Redis]]:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    client.flushdb()
    svc = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/3", "MODEL": "resnet50", "MODEL_WEIGHTS": "random",
        "CLASS_INDEX": str(CLASS_INDEX), "API_WORKERS": "1", "BATCH_SIZE": "32",
        "VISIBILITY_TIMEOUT_S": str(VISIBILITY_S), "MAX_DELIVERIES": "2", "BATCH_WAIT_MS": "300",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("crash-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "crash-service.log").start()
    yield svc, client
    assert svc.stop() == 0, svc.log_tail()


def model_process(client: redis.Redis, not_pid: int | None = None, timeout_s: float = 120) -> int:
    """The pid of the pool process that has the model loaded (a new one if `not_pid` is given)."""
    found: list[int] = []

    def ready() -> bool:
        found[:] = [w["pid"] for w in live_workers(client)  # a killed process's heartbeat outlives it a little
                    if w.get("role") == "model" and w["pid"] != not_pid and psutil.pid_exists(w["pid"])]
        return bool(found)

    assert wait_until(ready, timeout_s, interval_s=0.02), "no model process came up"
    return found[0]


def submit(svc: ServiceProcess, image: bytes) -> str:
    response = httpx.post(svc.url + "/predict", params={"timeout": "0"}, files={"image": image}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def results(svc: ServiceProcess, ids: list[str], timeout_s: float) -> dict[str, dict]:
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(ids) and time.monotonic() < deadline:
        for task_id in set(ids) - set(done):
            body = httpx.get(f"{svc.url}/result/{task_id}", timeout=10).json()
            if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                done[task_id] = body
        time.sleep(0.2)
    return done


def kill_mid_run(pid: int) -> None:
    """Resume the frozen model process and kill it -9 once it has spent CPU on its batch.

    30 ms of CPU: more than its heartbeat thread uses, a fraction of one ResNet50 image (~130 ms).
    """
    process = psutil.Process(pid)
    used = sum(process.cpu_times()[:2])
    os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: sum(process.cpu_times()[:2]) >= used + 0.03, 10, interval_s=0.002)
    os.kill(pid, signal.SIGKILL)


def freeze_and_fill(svc: ServiceProcess, client: redis.Redis, pid: int, images: list[bytes]) -> list[str]:
    """Freeze the model process, submit, and wait until the worker took everything (its batch timer fired)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda image: submit(svc, image), images))
        assert wait_until(lambda: client.llen("interactive.resnet50") == 0, 30)
    except BaseException:
        os.kill(pid, signal.SIGCONT)  # never leave a frozen process behind a failed test
        raise
    time.sleep(1.0)  # the 300 ms batch window has flushed a batch to the frozen process
    return ids


def test_requests_in_a_killed_batch_are_redelivered_and_answered(crashable):
    svc, client = crashable
    photos = (labelled_photos() * 4)[:64]
    pid = model_process(client)
    ids = freeze_and_fill(svc, client, pid, [(SHARED / r["path"]).read_bytes() for r in photos])
    kill_mid_run(pid)

    answered = results(svc, ids, timeout_s=180)
    assert len(answered) == 64, f"{64 - len(answered)} accepted requests were never answered"
    for task_id in ids:
        assert answered[task_id]["status"] == "SUCCESS", answered[task_id]
        assert len(answered[task_id]["result"]["predictions"]) == 5
    redelivered = [i for i in ids if answered[i]["result"]["deliveries"] == 2]
    lost = re.findall(r"Batch of (\d+) lost", svc.log_path.read_text())
    assert lost and len(redelivered) == int(lost[0]) > 1, f"the kill did not hit a batch in flight: {lost}"
    assert model_process(client, not_pid=pid) != pid


def test_requests_held_by_a_killed_worker_main_process_are_answered_within_their_timeout(crashable):
    """kill -9 of the worker's main process (its prefetched requests are unacknowledged in Redis, nobody renews
    them): another worker gets them after VISIBILITY_TIMEOUT_S, not after the old 300 s, so a client waiting 60 s
    gets its 200."""
    svc, client = crashable
    photos = (labelled_photos() * 2)[:16]
    pid = model_process(client)
    main = psutil.Process(pid).parent()
    assert main is not None and "celery" in " ".join(main.cmdline())
    ids = freeze_and_fill(svc, client, pid, [(SHARED / r["path"]).read_bytes() for r in photos])
    held = client.hlen("unacked")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, svc.url + "/predict", params={"timeout": "60"},
                              files={"image": (SHARED / photos[0]["path"]).read_bytes()}, timeout=90)
        assert wait_until(lambda: client.hlen("unacked") == held + 1, 30)  # the worker holds it too
        main.kill()
        response = waiting.result()
    assert response.status_code == 200, response.text  # answered within its own timeout, not 202
    answered = results(svc, ids, timeout_s=120)
    assert all(answered[i]["status"] == "SUCCESS" for i in ids) and len(answered) == len(ids)
    model_process(client, not_pid=pid)


def test_requests_taken_by_a_worker_killed_before_recording_them_are_sent_again(crashable):
    """kombu's Redis transport takes a message (BRPOP) and records it as delivered in a second step: a worker
    killed in between loses it, and nothing in Celery or kombu ever queues it again. Here the worker's main
    process is frozen, the requests' messages are taken from the queue as its BRPOPs would, and it is killed:
    the sweep (imageclf.core.request_watch) finds each unanswered with its message nowhere and queues it again."""
    svc, client = crashable
    photos = labelled_photos()[:3]
    main = psutil.Process(model_process(client)).parent()
    assert main is not None and "celery" in " ".join(main.cmdline())
    before = count_resent(client)
    main.suspend()
    try:
        ids = [submit(svc, (SHARED / r["path"]).read_bytes()) for r in photos]
        taken = 0
        while client.rpop("interactive.resnet50") is not None:
            taken += 1
    finally:
        main.kill()
    assert taken >= 2  # a BRPOP the frozen process had pending may have taken the first one: lost all the same
    answered = results(svc, ids, timeout_s=150)
    assert len(answered) == len(ids) and all(body["status"] == "SUCCESS" for body in answered.values()), answered
    assert count_resent(client) - before >= taken
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    assert f"imageclf_requests_resent_total {float(count_resent(client))}" in metrics


def test_a_request_whose_worker_always_dies_is_failed_after_max_deliveries(crashable):
    svc, client = crashable
    image = (SHARED / labelled_photos()[0]["path"]).read_bytes()
    pid = model_process(client)
    [poison] = freeze_and_fill(svc, client, pid, [image])
    kill_mid_run(pid)
    # Its second delivery (after the visibility timeout) runs alone; freeze the new process first.
    pid = model_process(client, not_pid=pid)
    os.kill(pid, signal.SIGSTOP)
    redelivered = wait_until(lambda: client.get(f"imageclf:deliveries:{poison}") == b"1", VISIBILITY_S * 4)
    if not redelivered:
        os.kill(pid, signal.SIGCONT)
    assert redelivered, "the request was not delivered a second time"
    time.sleep(0.5)
    kill_mid_run(pid)

    [body] = results(svc, [poison], timeout_s=VISIBILITY_S * 6).values()
    assert body["status"] == "FAILURE" and "delivered 3 times" in body["error"], body
    # The next process serves normally.
    model_process(client, not_pid=pid)
    response = httpx.post(svc.url + "/predict", files={"image": image}, timeout=60)
    assert response.status_code == 200 and json.loads(response.text)["success"]
