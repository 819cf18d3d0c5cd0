"""Workers on other hosts: a model worker needs only REDIS_URL, and a decoder that cannot see the API's
UPLOAD_DIR fails the job with a clear error instead of hanging.

The "other host" is a worker process in its own UTS namespace (its own hostname, where `unshare`
is allowed), started from another working directory with its own UPLOAD_DIR and HOME and an
environment of only REDIS_URL, the model's settings and the code's path: no disk, port or
variable shared with the API but Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from imageclf.core.celery_app import CELERY_APP
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import wait_until
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, ROOT, SHARED, finished_job, labelled_photos, start_api

MODEL = "mobilenet_v1_0.75"
OTHER_HOST = "gpu-node-7"


def _can_set_hostname() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--uts", "hostname", OTHER_HOST], capture_output=True).returncode == 0


def on_other_host(home: Path, redis_url: str, queues: str, node: str) -> subprocess.Popen:
    """A Celery worker as if on another machine: own hostname, working directory, UPLOAD_DIR and HOME."""
    (home / "uploads").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(home), "REDIS_URL": redis_url,
           "MODEL": MODEL, "MODEL_WEIGHTS": str(MOBILENET_FILE), "CLASS_INDEX": str(CLASS_INDEX),
           "UPLOAD_DIR": str(home / "uploads"), "CUDA_VISIBLE_DEVICES": "", "BATCH_SIZE": "8"}
    celery = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--pool", "prefork", "--concurrency", "1",
              "--queues", queues, "--hostname", f"{node}@%h", "--loglevel", "INFO"]
    if _can_set_hostname():
        celery = ["unshare", "--uts", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh", *celery]
    log = open(home / f"{node}.log", "w")
    return subprocess.Popen(celery, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture()
def api_without_workers(tmp_path) -> Iterator[tuple[str, str]]:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(redis_argv(port, str(tmp_path / "redis"), durable=False), stdout=subprocess.DEVNULL)
    assert wait_until(lambda: ping(redis_url), 15)
    api, url = start_api(redis_url, {"UPLOAD_DIR": str(tmp_path / "api-uploads")})
    try:
        yield url, redis_url
    finally:
        api.terminate()
        api.wait(20)
        server.terminate()
        server.wait(10)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_model_worker_elsewhere_serves_and_a_decoder_without_the_files_fails_the_job_clearly(
        api_without_workers, tmp_path):
    url, redis_url = api_without_workers
    worker = on_other_host(tmp_path / "host-b", redis_url, f"interactive.{MODEL},bulk.{MODEL}", MODEL)
    local_decoder = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--queues", "jobs", "--concurrency", "1",
         "--hostname", "decoder@%h"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env={**os.environ, "REDIS_URL": redis_url, "MODEL": MODEL, "UPLOAD_DIR": str(tmp_path / "api-uploads")})
    try:
        assert wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, 240), \
            (tmp_path / "host-b" / f"{MODEL}.log").read_text()[-3000:]
        photos = labelled_photos()[:3]
        for row in photos:
            response = httpx.post(url + "/predict", files={"image": (SHARED / row["path"]).read_bytes()}, timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["class_id"] == int(row["expected_class_id"])
        job = httpx.post(url + "/jobs", files=[("images", (r["path"], (SHARED / r["path"]).read_bytes()))
                                               for r in photos], timeout=60)
        done = finished_job(url, job.json()["result_url"])
        assert done["status"] == "SUCCESS" and done["result"]["succeeded"] == 3
        # The only model worker is the one on the other host, answering by its own hostname.
        control = Celery("test-control")
        control.config_from_object("imageclf.core.celeryconfig")
        control.conf.update(broker_url=redis_url, result_backend=None)
        nodes = {node for reply in control.control.ping(timeout=3) for node in reply}
        assert f"{MODEL}@{OTHER_HOST if _can_set_hostname() else socket.gethostname()}" in nodes, nodes
        assert '"event": "batch"' in (tmp_path / "host-b" / f"{MODEL}.log").read_text()
    finally:
        stop(local_decoder)

    remote_decoder = on_other_host(tmp_path / "host-c", redis_url, "jobs", "decoder")
    try:
        job = httpx.post(url + "/jobs", files=[("images", ("a.jpg", (SHARED / photos[0]["path"]).read_bytes()))],
                         timeout=60)
        assert job.status_code == 202
        failed = finished_job(url, job.json()["result_url"], timeout_s=120)
        assert failed["status"] == "FAILURE"
        assert "cannot read the job's files" in failed["error"] and "UPLOAD_DIR" in failed["error"]
    finally:
        stop(remote_decoder)
        stop(worker)
