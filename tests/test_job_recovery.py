"""No job can stall: the rules that keep one chain of steps per job (against a real Redis), a decoder's pool
process killed mid-step, and a chain broken outright and found by the stall sweep, on the running service."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import uuid
import zipfile

import httpx
import psutil
import pytest
import redis

from tasks.job_store import (
    ACTIVE_KEY,
    acquire_lock,
    active_jobs,
    create_job,
    discard,
    hand_over,
    is_driver,
    items_key,
    job_key,
    mark_reading,
    read_job,
    record_death,
    take_stalled,
    update_if_active,
)
from tests.helpers import SHARED, labelled_photos
from tests.test_operations import scrape, value


def new_job(client: redis.Redis, driver: str = "step-1") -> str:
    job_id = f"test-{uuid.uuid4()}"
    with client.pipeline() as pipe:
        create_job(pipe, job_id, "images", 3, {"model": "m"}, 600, driver=driver)
        pipe.execute()
    return job_id


def test_only_the_driver_step_works_and_hands_over_once(redis_client):
    job_id = new_job(redis_client)
    assert is_driver(redis_client, job_id, "step-1") and not is_driver(redis_client, job_id, "step-0")
    assert hand_over(redis_client, job_id, "step-1", "step-2")
    assert not hand_over(redis_client, job_id, "step-1", "step-3")  # a copy of step-1 cannot fork the chain
    assert is_driver(redis_client, job_id, "step-2") and not is_driver(redis_client, job_id, "step-1")
    update_if_active(redis_client, job_id, 600, status="SUCCESS")
    assert not is_driver(redis_client, job_id, "step-2")  # an ended job has no driver
    discard(redis_client, job_id)


def test_a_lock_held_by_a_dead_process_of_this_host_is_taken_at_once(redis_client):
    job_id = new_job(redis_client)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = job_key(job_id) + ":lock"
    redis_client.set(lock, f"{socket.gethostname()}/{dead.pid}/x", px=60_000)
    token, freed = acquire_lock(redis_client, job_id, 60)
    assert token is not None and freed and redis_client.get(lock).decode() == token

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        redis_client.set(lock, f"{socket.gethostname()}/{alive.pid}/x", px=60_000)
        assert acquire_lock(redis_client, job_id, 60) == (None, False)
        redis_client.set(lock, f"another-host/{dead.pid}/x", px=60_000)  # not ours to judge: wait for it
        assert acquire_lock(redis_client, job_id, 60) == (None, False)
    finally:
        alive.kill()
        alive.wait()
        discard(redis_client, job_id)


def test_the_sweep_takes_a_stalled_job_once_per_period_and_forgets_ended_ones(redis_client):
    job_id = new_job(redis_client, driver="step-7")
    assert job_id in active_jobs(redis_client)
    assert take_stalled(redis_client, job_id, 30) is None  # it just moved
    redis_client.hset(job_key(job_id), "updated", time.time() - 60)
    redis_client.set(job_key(job_id) + ":lock", "someone", px=5000)
    assert take_stalled(redis_client, job_id, 30) is None  # a step is working on it
    redis_client.delete(job_key(job_id) + ":lock")
    assert take_stalled(redis_client, job_id, 30) == "step-7"  # its driver's step is sent again, same id
    assert take_stalled(redis_client, job_id, 30) is None  # not again until another period without progress
    update_if_active(redis_client, job_id, 600, status="REVOKED")
    assert take_stalled(redis_client, job_id, 0) is None
    assert redis_client.zscore(ACTIVE_KEY, job_id) is None
    discard(redis_client, job_id)


def test_an_item_that_kills_its_decoder_every_time_fails_alone_and_the_job_goes_on(redis_client):
    from tasks.jobs import _Driver

    job_id = new_job(redis_client)
    job = read_job(redis_client, job_id)
    assert job is not None and "died_at" not in job
    update_if_active(redis_client, job_id, 600, cursor=1)
    assert record_death(redis_client, job_id) == (1, 0)  # a step died; on which item is not known
    job = read_job(redis_client, job_id)
    assert job is not None and job["died_at"] == 1  # from there on steps read one item a round and say which
    assert record_death(redis_client, job_id) == (1, 0)  # died while waiting, not reading: no item is blamed
    mark_reading(redis_client, job_id, 1)
    assert record_death(redis_client, job_id) == (1, 1)
    assert record_death(redis_client, job_id) == (1, 2)  # died again while reading the same item
    _Driver(redis_client, job_id).skip(1, "a decoder process died 3 times while reading this item")
    item = json.loads(redis_client.hget(items_key(job_id), "1"))
    assert item["status"] == "FAILURE" and "died 3 times" in item["error"]
    assert read_job(redis_client, job_id)["cursor"] == 2
    _Driver(redis_client, job_id).skip(1, "again")  # the cursor moved on: nothing to skip
    assert read_job(redis_client, job_id)["cursor"] == 2 and redis_client.hlen(items_key(job_id)) == 1
    mark_reading(redis_client, job_id, 2)
    assert record_death(redis_client, job_id) == (2, 1)  # a death on the next item counts afresh
    discard(redis_client, job_id)


def test_an_item_whose_message_is_nowhere_is_found_and_sent_again(redis_client):
    """Pixels still there, no answer, the message neither queued nor held by a worker (taken by one that died
    before recording it): after _GONE_CHECK_S the driver counts it lost; queued or held, it does not."""
    from tasks.jobs import _GONE_CHECK_S, _Driver
    from tasks.payloads import PIXELS_PREFIX

    job_id = new_job(redis_client)
    tid = str(uuid.uuid4())
    redis_client.hset(job_key(job_id) + ":pending", tid, json.dumps({"i": 0, "sent": time.time() - _GONE_CHECK_S - 1}))
    redis_client.set(PIXELS_PREFIX + tid, b"\0" * 12, ex=60)
    queue = f"bulk.m-{uuid.uuid4().hex}"

    def gone() -> list[str]:
        driver = _Driver(redis_client, job_id)
        driver.in_flight_key = "imageclf:bulk:in-flight:test"
        _, _, unanswered = driver._collect()
        assert list(unanswered) == [tid]
        return driver._messages_gone([tid], queue.split(".", 1)[1])

    redis_client.lpush(queue, json.dumps({"headers": {"id": tid}}))
    assert gone() == []  # still queued: waiting its turn, not lost
    redis_client.delete(queue)
    redis_client.hset("unacked", "a-tag", json.dumps([{"headers": {"id": tid}}, "", queue]))
    assert gone() == []  # held by a live worker
    redis_client.hdel("unacked", "a-tag")
    assert gone() == [tid]
    redis_client.delete(PIXELS_PREFIX + tid)
    discard(redis_client, job_id)


def photo_zip(n: int) -> tuple[bytes, list[int]]:
    photos = (labelled_photos() * (n // len(labelled_photos()) + 1))[:n]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for i, row in enumerate(photos):
            z.writestr(f"{i:03d}.jpg", (SHARED / row["path"]).read_bytes())
    return archive.getvalue(), [int(row["expected_class_id"]) for row in photos]


def finished(service, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{service.url}/result/{job_id}", timeout=10).json()
        if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s: {body}")


def assert_each_item_once_and_right(body: dict, labels: list[int]) -> None:
    assert body["status"] == "SUCCESS", body
    items = body["result"]["items"]
    assert [item["index"] for item in items] == list(range(len(labels)))
    assert [item["predictions"][0]["class_id"] for item in items] == labels
    assert body["done"] == body["total"] == len(labels)


def resumed(service, reason: str) -> float:
    return value(scrape(service), "imageclf_jobs_resumed", "imageclf_jobs_resumed_total", reason=reason)


def submit_zip(service, n: int) -> tuple[str, list[int]]:
    data, labels = photo_zip(n)
    response = httpx.post(service.url + "/jobs", files={"images": ("photos.zip", data)}, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"], labels


def test_a_decoder_killed_mid_step_loses_nothing_and_the_job_goes_on(service, redis_client):
    before = resumed(service, "driver_died")
    job_id, labels = submit_zip(service, 60)
    lock = job_key(job_id) + ":lock"
    deadline = time.monotonic() + 60
    while (holder := redis_client.get(lock)) is None:  # a step is running: its process is named in the lock
        assert time.monotonic() < deadline, "no step of the job ever ran"
        time.sleep(0.005)
    pid = int(holder.decode().split("/")[1])
    assert "--queues jobs" in " ".join(psutil.Process(pid).cmdline())  # a decoder's pool process
    psutil.Process(pid).kill()
    body = finished(service, job_id, 120)
    assert_each_item_once_and_right(body, labels)
    assert resumed(service, "driver_died") >= before + 1


def test_a_broken_chain_is_found_by_the_stall_sweep(service, redis_client):
    from tasks.readiness import live_workers

    before = resumed(service, "stalled")
    [model] = [psutil.Process(w["pid"]) for w in live_workers(redis_client) if w.get("role") == "model"]
    model.suspend()  # no answers: the job cannot finish within its first step
    try:
        job_id, labels = submit_zip(service, 40)
        # Break the chain: the job names a driver no step has, so its running or queued step stops as a stale
        # copy and queues no other. Only the sweep (JOB_STALL_S, 30 s) can take it up again.
        redis_client.hset(job_key(job_id), "driver", "a-step-that-was-never-sent")
        time.sleep(3)  # past any step that was running (2 s)
    finally:
        model.resume()
    body = finished(service, job_id, 180)
    assert_each_item_once_and_right(body, labels)
    assert resumed(service, "stalled") >= before + 1


def test_items_whose_records_were_lost_with_redis_are_sent_again(service, redis_client):
    """A Redis killed -9 loses what it had not written to disk (the append-only file is synced every second),
    while the step's client reconnects and goes on past the lost items: here two items of a job, all sent, lose
    their pending records as they would. The job still answers each item once and right."""
    from tasks.job_store import bulk_in_flight_key, pending_key
    from tasks.readiness import live_workers

    before = resumed(service, "items_lost")
    [model] = [psutil.Process(w["pid"]) for w in live_workers(redis_client) if w.get("role") == "model"]
    model.suspend()  # no answers: every item stays pending
    try:
        job_id, labels = submit_zip(service, 6)  # under the service's JOB_IN_FLIGHT (8): all sent at once
        deadline = time.monotonic() + 60
        while redis_client.hlen(pending_key(job_id)) < len(labels):
            assert time.monotonic() < deadline, "the job's items were never all sent"
            time.sleep(0.05)
        lost = [tid.decode() for tid in redis_client.hkeys(pending_key(job_id))[:2]]
        redis_client.hdel(pending_key(job_id), *lost)
        redis_client.zrem(bulk_in_flight_key("mobilenet_v1_0.75"), *lost)
    finally:
        model.resume()
    body = finished(service, job_id, 120)
    assert_each_item_once_and_right(body, labels)
    assert resumed(service, "items_lost") >= before + 1


def test_a_model_window_drops_ids_no_job_waits_for(redis_client):
    """Ids sent over the age limit with neither pixels nor an answer leave the window; the others stay."""
    from tasks.job_store import prune_in_flight
    from tasks.payloads import PIXELS_PREFIX
    from tasks.result_store import RESULT_KEY_PREFIX

    key = f"imageclf:bulk:in-flight:test-{uuid.uuid4().hex}"
    old, waiting, answered, young = (str(uuid.uuid4()) for _ in range(4))
    redis_client.zadd(key, {old: time.time() - 60, waiting: time.time() - 60, answered: time.time() - 60,
                            young: time.time()})
    redis_client.set(PIXELS_PREFIX + waiting, b"\0", ex=60)
    redis_client.set(RESULT_KEY_PREFIX + answered, b"{}", ex=60)
    assert prune_in_flight(redis_client, key, 10) == 1
    assert {m.decode() for m in redis_client.zrange(key, 0, -1)} == {waiting, answered, young}
    redis_client.delete(key, PIXELS_PREFIX + waiting, RESULT_KEY_PREFIX + answered)


def test_the_launcher_restarts_a_dead_part_with_backoff_and_gives_up_when_it_keeps_dying():
    deaths = 5
    from imageclf.run import Parts, restart_dead
    from imageclf.supervise import GaveUp, ProcessGroup, RestartPolicy

    group = ProcessGroup()
    parts = Parts(group)
    policy = RestartPolicy(max_deaths=deaths, first_s=0.01)
    parts.start("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"])
    parts.start("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    orders = []
    try:
        with pytest.raises(GaveUp, match=r"flaky died 5 times within 60 s, last exited with code 3"):
            while True:
                time.sleep(0.1)
                before = [p.pid for _, p in group.children]
                restart_dead(parts, policy)
                if [p.pid for _, p in group.children] != before:
                    orders.append([name for name, _ in group.children])
        # Restarted in its place: the stop order stays the start order.
        assert orders == [["flaky", "steady"]] * (deaths - 1)
        assert policy.backoff_after_death("other", now=0) == 0.01
        assert policy.backoff_after_death("other", now=1) == 0.02
        assert policy.backoff_after_death("other", now=100) == 0.01  # deaths past the window are forgotten
    finally:
        group.stop_all(grace_s=5)
