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

from imageclf.workers.jobs.store import (
    ACTIVE_KEY,
    acquire_lock,
    active_jobs,
    create_job,
    discard,
    hand_over,
    is_driver,
    job_key,
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


def test_an_item_that_kills_its_decoder_every_time_fails_alone_and_the_job_goes_on(redis_client, tmp_path,
                                                                                   monkeypatch):
    """A chunk delivered again after a death reads its items one at a time, naming each in Redis first: an item
    read by MAX_DELIVERIES processes that all died fails alone, and the chunk's other items are decoded."""
    from imageclf import settings
    from imageclf.workers.jobs import chunks as job_chunks
    from imageclf.workers.jobs.store import chunk_attempt, poison_check

    job_id = new_job(redis_client)
    assert chunk_attempt(redis_client, job_id, "c1") == 1  # first delivery: read at full speed
    for attempt in range(2, settings.MAX_DELIVERIES + 3):  # each later delivery dies reading item 6
        assert chunk_attempt(redis_client, job_id, "c1") == attempt  # read carefully
        assert poison_check(redis_client, job_id, "c1", 5) == 0  # 5 is named as the one being read, and read
        deaths = poison_check(redis_client, job_id, "c1", 6)
        assert deaths == (settings.MAX_DELIVERIES if attempt == settings.MAX_DELIVERIES + 2 else 0)
    assert poison_check(redis_client, job_id, "c1", 7) == 0  # the chunk goes on past it
    assert chunk_attempt(redis_client, job_id, "c2") == 1 and poison_check(redis_client, job_id, "c2", 6) == 0

    monkeypatch.setattr(settings, "UPLOAD_DIR", str(tmp_path))
    (tmp_path / job_id).mkdir()
    photo = SHARED / labelled_photos()[0]["path"]
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / job_id / name).write_bytes(photo.read_bytes())
    chunk = {"id": "c3", "first": 10, "count": 3, "part": 3, "inputs": {"": [224, 224, "squash"]},
             "items": [{"name": n, "file": n} for n in ("a.jpg", "b.jpg", "c.jpg")]}
    for _ in range(settings.MAX_DELIVERIES):  # deliveries that each died reading item 11
        chunk_attempt(redis_client, job_id, "c3")
        poison_check(redis_client, job_id, "c3", 11)
    chunk_attempt(redis_client, job_id, "c3")  # counts the last death
    read = list(job_chunks._items(redis_client, job_id, {"kind": "images"}, chunk, careful=True))
    assert [slot for slot, *_ in read] == [0, 1, 2]
    assert [type(outcome) for _, _, outcome, _ in read] == [bytes, str, bytes]
    assert f"died {settings.MAX_DELIVERIES} times" in read[1][2] and len(read[0][2]) == 224 * 224 * 3
    discard(redis_client, job_id)


def test_a_chunk_whose_messages_are_nowhere_is_found(redis_client):
    """A chunk with neither its decoding message nor a part's message queued or held by a worker (lost with a
    failed-over Redis, or taken by one that died before recording it) is found; queued or held, it is not."""
    from imageclf.workers.jobs.driver import _Driver

    job_id = new_job(redis_client)
    cid = str(uuid.uuid4())
    queues = [f"bulk.m-{uuid.uuid4().hex}", f"jobs-{uuid.uuid4().hex}"]  # consumed by no worker
    driver = _Driver(redis_client, job_id)

    def nowhere() -> list[str]:
        return driver._nowhere([cid], queues)

    for queue, message_id in zip(queues, (f"{cid}.0", f"{cid}.decode")):
        redis_client.lpush(queue, json.dumps({"headers": {"id": message_id}}))
        assert nowhere() == []  # still queued: waiting its turn, not lost
        redis_client.lrem(queue, 1, json.dumps({"headers": {"id": message_id}}))
    redis_client.hset("unacked", "a-tag", json.dumps([{"headers": {"id": f"{cid}.decode"}}, "", queues[1]]))
    assert nowhere() == []  # held by a live worker
    redis_client.hdel("unacked", "a-tag")
    assert nowhere() == [cid]
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
    while True:  # until a process is killed in the middle of a step (steps are short: it may finish first)
        while (holder := redis_client.get(lock)) is None:  # a step is running: its process is named in the lock
            assert time.monotonic() < deadline, "no step of the job was ever caught running"
            time.sleep(0.002)
        process = psutil.Process(int(holder.decode().split("/")[1]))
        assert "--queues jobs" in " ".join(process.cmdline())  # a decoder's pool process
        process.kill()
        process.wait(10)
        if redis_client.get(lock) == holder:  # it died holding the job
            break
    body = finished(service, job_id, 120)
    assert_each_item_once_and_right(body, labels)
    assert resumed(service, "driver_died") >= before + 1


def test_a_broken_chain_is_found_by_the_stall_sweep(service, redis_client):
    from imageclf.core.readiness import live_workers

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
    from imageclf.core.readiness import live_workers
    from imageclf.workers.jobs.store import bulk_in_flight_key, pending_key, window_member

    before = resumed(service, "items_lost")
    [model] = [psutil.Process(w["pid"]) for w in live_workers(redis_client) if w.get("role") == "model"]
    model.suspend()  # no answers: every item stays pending
    try:
        job_id, labels = submit_zip(service, 6)  # under the service's JOB_IN_FLIGHT (8): all sent at once
        deadline = time.monotonic() + 60
        while sum(json.loads(c)["count"] for c in redis_client.hvals(pending_key(job_id))) < len(labels):
            assert time.monotonic() < deadline, "the job's items were never all sent"
            time.sleep(0.05)
        lost = redis_client.hkeys(pending_key(job_id))[0].decode()  # a chunk's record, as a killed Redis loses it
        redis_client.hdel(pending_key(job_id), lost)
        redis_client.zrem(bulk_in_flight_key("mobilenet_v1_0.75"), window_member(job_id, lost))
    finally:
        model.resume()
    body = finished(service, job_id, 120)
    assert_each_item_once_and_right(body, labels)
    assert resumed(service, "items_lost") >= before + 1


def test_a_model_window_drops_ids_no_job_waits_for(redis_client):
    """Chunks sent over the age limit that their job no longer waits for leave the window; the others stay."""
    from imageclf.workers.jobs.store import pending_key, prune_in_flight, window_member

    key = f"imageclf:bulk:in-flight:test-{uuid.uuid4().hex}"
    job_id = new_job(redis_client)
    old, waiting, young = (window_member(job_id, str(uuid.uuid4())) for _ in range(3))
    redis_client.zadd(key, {old: time.time() - 60, waiting: time.time() - 60, young: time.time()})
    redis_client.hset(pending_key(job_id), waiting.split("/")[1], json.dumps(
        {"first": 0, "count": 1, "part": 1, "parts": 1, "left": [0], "sent": time.time() - 60}))
    assert prune_in_flight(redis_client, key, 10) == 1
    assert {m.decode() for m in redis_client.zrange(key, 0, -1)} == {waiting, young}
    redis_client.delete(key)
    discard(redis_client, job_id)


def test_the_launcher_restarts_a_dead_part_with_backoff_and_gives_up_when_it_keeps_dying():
    deaths = 5
    from imageclf.launch.run import Parts, restart_dead
    from imageclf.launch.supervise import GaveUp, ProcessGroup, RestartPolicy

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
