"""Accepted work survives a Redis crash when Redis keeps an append-only file (as `make run`'s does).

Requests and a job are accepted (202) while no worker runs, Redis is killed with
SIGKILL and started again on the same files, then the workers start: every accepted
request and the job are answered. (AOF is fsynced every second: what was accepted in
the last second before a hard crash can be lost; a clean shutdown loses nothing.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psutil
import redis

from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import wait_until
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, ROOT, SHARED, labelled_photos, start_api


def durable_redis(tmp_path) -> tuple[list[str], str, subprocess.Popen]:
    """A Redis with an append-only file in `tmp_path`: (its command line, to start it again; URL; process)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = redis_argv(port, str(tmp_path / "redis"), durable=True)
    server = subprocess.Popen(argv)
    assert wait_until(lambda: ping(url), 15)
    return argv, url, server


def service_env(url: str, tmp_path) -> dict[str, str]:
    return {"REDIS_URL": url, "MODEL": "mobilenet_v1_0.75", "MODEL_WEIGHTS": str(MOBILENET_FILE),
            "CLASS_INDEX": str(CLASS_INDEX), "UPLOAD_DIR": str(tmp_path / "uploads"), "CUDA_VISIBLE_DEVICES": ""}


def submit_photo(api_url: str, row: dict) -> str:
    """A /predict request answered 202 at once; its id."""
    response = httpx.post(api_url + "/predict", params={"timeout": "0"},
                          files={"image": (SHARED / row["path"]).read_bytes()}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def ended(api_url: str, ids: list[str], timeout_s: float) -> dict[str, dict]:
    """The final state of each of `ids` that ends within `timeout_s` (each must stay known: never lost)."""
    states: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(states) < len(ids):
        for task_id in ids:
            response = httpx.get(api_url + f"/result/{task_id}", timeout=30)
            assert response.status_code == 200, f"{task_id} was lost: {response.text}"
            if response.json()["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                states[task_id] = response.json()
        time.sleep(0.5)
    return states


@dataclass
class Running:
    """Redis with an append-only file, the API and the workers (BATCH_SIZE 8), with a model process up."""

    argv: list[str]
    url: str
    server: subprocess.Popen
    api_url: str
    client: redis.Redis
    model: psutil.Process  # the model's pool process

    def kill_redis(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(10)

    def start_redis(self) -> None:
        self.server = subprocess.Popen(self.argv)
        assert wait_until(lambda: ping(self.url), 30)


@contextmanager
def running(tmp_path) -> Iterator[Running]:
    from imageclf.core.readiness import live_workers

    argv, url, server = durable_redis(tmp_path)
    env = {**service_env(url, tmp_path), "BATCH_SIZE": "8"}
    api, api_url = start_api(url, env)
    workers = subprocess.Popen([sys.executable, "-m", "imageclf.launch.start_workers"], cwd=ROOT,
                               env={**os.environ, **env}, start_new_session=True)
    client = redis.Redis.from_url(url)
    service: Running | None = None
    try:
        def model_pids() -> list[int]:
            return [w["pid"] for w in live_workers(client) if w.get("role") == "model"]

        assert wait_until(model_pids, 180), "no model worker came up"
        service = Running(argv, url, server, api_url, client, psutil.Process(model_pids()[0]))
        yield service
    finally:
        os.killpg(workers.pid, signal.SIGTERM)
        workers.wait(60)
        api.terminate()
        api.wait(20)
        server = service.server if service is not None else server  # the one running now (restarted or not)
        server.terminate()
        server.wait(10)


def test_accepted_requests_and_jobs_survive_a_redis_crash(tmp_path):
    argv, url, server = durable_redis(tmp_path)
    env = service_env(url, tmp_path)
    api, api_url = start_api(url, env)
    workers = None
    try:
        photos = labelled_photos()[:6]
        ids = [submit_photo(api_url, row) for row in photos]
        job = httpx.post(api_url + "/jobs", files=[("images", ("a.jpg", (SHARED / photos[0]["path"]).read_bytes())),
                                                   ("images", ("b.jpg", (SHARED / photos[1]["path"]).read_bytes()))],
                         timeout=30)
        assert job.status_code == 202, job.text
        time.sleep(2.0)  # past the AOF's one-second fsync

        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert httpx.get(api_url + f"/result/{ids[0]}", timeout=30).status_code == 503
        server = subprocess.Popen(argv)
        assert wait_until(lambda: ping(url), 30)

        workers = subprocess.Popen([sys.executable, "-m", "imageclf.launch.start_workers"], cwd=ROOT,
                                   env={**os.environ, **env}, start_new_session=True)
        states = ended(api_url, [*ids, job.json()["id"]], 240)
        assert len(states) == len(ids) + 1, f"answered {len(states)} of {len(ids) + 1} after the crash"
        for task_id, row in zip(ids, photos):
            assert states[task_id]["result"]["predictions"][0]["class_id"] == int(row["expected_class_id"])
        items = states[job.json()["id"]]["result"]["items"]
        assert [i["predictions"][0]["class_id"] for i in items] == [int(r["expected_class_id"]) for r in photos[:2]]
    finally:
        if workers is not None:
            os.killpg(workers.pid, signal.SIGTERM)
            workers.wait(60)
        api.terminate()
        api.wait(20)
        server.terminate()
        server.wait(10)


def test_a_batch_that_cannot_store_its_answers_is_requeued_not_dropped(tmp_path):
    """Redis refuses the answers of a batch (here: out of memory, as it refuses writes under `noeviction`; in
    production also a Redis killed and back within a second): the worker must not acknowledge those requests
    (celery-batches would, and they were lost: seen under chaos). They go back to the queue and are answered
    once Redis takes writes again."""
    with running(tmp_path) as service:
        client = service.client
        service.model.suspend()  # the batch reaches the model process and waits there
        photos = labelled_photos()[:6]
        ids = [submit_photo(service.api_url, row) for row in photos]
        assert wait_until(lambda: client.llen("interactive.mobilenet_v1_0.75") == 0, 30)
        time.sleep(1.0)

        client.config_set("maxmemory", 1)  # every write refused from now on
        service.model.resume()  # it reads the pixels, computes the batch, and cannot store the answers
        time.sleep(3.0)
        assert not any(client.exists(f"celery-task-meta-{task_id}") for task_id in ids)
        client.config_set("maxmemory", 0)

        states = ended(service.api_url, ids, 120)
        assert len(states) == len(ids), f"answered {len(states)} of {len(ids)}: the rest were dropped"
        assert all(state["status"] == "SUCCESS" for state in states.values()), states
        for task_id, row in zip(ids, photos):
            assert states[task_id]["result"]["predictions"][0]["class_id"] == int(row["expected_class_id"])


def test_the_model_worker_batches_again_after_its_broker_connection_is_lost(tmp_path):
    """Redis killed while the model worker has a batch sent to its process but not yet taken, and requests
    waiting in its buffer. Celery then clears the event loop's timers (the batch flush timer too) and the pool
    drops the batch no process took (its callbacks never come): before this was handled, the worker counted
    that batch as running for good, so job images (which never queue behind a running batch) and interactive
    requests short of a full batch waited forever. Seen under chaos with Redis killed."""
    photos = labelled_photos()[:6]
    with running(tmp_path) as service:
        client = service.client
        service.model.suspend()  # a batch is sent to the process and waits there, not taken
        ids = [submit_photo(service.api_url, row) for row in photos[:4]]
        assert wait_until(lambda: client.llen("interactive.mobilenet_v1_0.75") == 0, 30)
        time.sleep(1.0)
        ids += [submit_photo(service.api_url, row) for row in photos[4:]]  # these wait in the worker's buffer
        assert wait_until(lambda: client.llen("interactive.mobilenet_v1_0.75") == 0, 30)
        time.sleep(1.5)  # past the append-only file's one-second fsync

        service.kill_redis()
        time.sleep(2.0)  # the worker sees the connection lost
        service.start_redis()
        service.model.resume()
        job = httpx.post(service.api_url + "/jobs", timeout=30, files=[
            ("images", (f"{i}.jpg", (SHARED / row["path"]).read_bytes())) for i, row in enumerate(photos)])
        assert job.status_code == 202, job.text

        states = ended(service.api_url, [*ids, job.json()["id"]], 120)
        assert len(states) == len(ids) + 1, f"answered {len(states)} of {len(ids) + 1} after the reconnect"
        for task_id, row in zip(ids, photos):
            assert states[task_id]["result"]["predictions"][0]["class_id"] == int(row["expected_class_id"])
        items = states[job.json()["id"]]["result"]["items"]
        assert [item["predictions"][0]["class_id"] for item in items] == [int(r["expected_class_id"]) for r in photos]
