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

import httpx

from imageclf.redis_server import free_port, ping, redis_argv
from imageclf.service_process import ROOT
from imageclf.supervise import wait_until
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, SHARED, labelled_photos, start_api


def test_accepted_requests_and_jobs_survive_a_redis_crash(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = redis_argv(port, str(tmp_path / "redis"), durable=True)
    server = subprocess.Popen(argv)
    assert wait_until(lambda: ping(url), 15)
    env = {"REDIS_URL": url, "MODEL": "mobilenet_v1_0.75", "MODEL_WEIGHTS": str(MOBILENET_FILE),
           "CLASS_INDEX": str(CLASS_INDEX), "UPLOAD_DIR": str(tmp_path / "uploads"), "CUDA_VISIBLE_DEVICES": ""}
    api, api_url = start_api(url, env)
    workers = None
    try:
        photos = labelled_photos()[:6]
        ids = []
        for row in photos:
            response = httpx.post(api_url + "/predict", params={"timeout": "0"},
                                  files={"image": (SHARED / row["path"]).read_bytes()}, timeout=30)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
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

        workers = subprocess.Popen([sys.executable, "-m", "imageclf.start_workers"], cwd=ROOT,
                                   env={**os.environ, **env}, start_new_session=True)
        deadline = time.monotonic() + 240
        states: dict[str, dict] = {}
        while time.monotonic() < deadline and (len(states) < len(ids) + 1):
            for task_id in [*ids, job.json()["id"]]:
                response = httpx.get(api_url + f"/result/{task_id}", timeout=30)
                assert response.status_code == 200, f"{task_id} was lost: {response.text}"
                body = response.json()
                if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                    states[task_id] = body
            time.sleep(0.5)
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
