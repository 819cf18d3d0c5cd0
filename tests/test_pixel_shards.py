"""PIXELS_REDIS_URLS: request pixels live on their own Redis servers, the broker carries only small messages.

The whole service runs against a broker Redis and two pixel shards: /predict and a job give the
MANIFEST's labels, each shard holds (and then deletes) its share of the images, and the broker
receives none of their pixels.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from imageclf.core.payloads import PIXELS_PREFIX
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, SHARED, finished_job, labelled_photos

PIXELS = 224 * 224 * 3


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Three Redis servers: the broker and two pixel shards."""
    procs, urls = [], []
    for name in ("broker", "shard-a", "shard-b"):
        port = free_port()
        procs.append(subprocess.Popen(redis_argv(port, str(tmp_path_factory.mktemp(name)), durable=False),
                                      stdout=subprocess.DEVNULL))
        urls.append(f"redis://127.0.0.1:{port}/0")
    assert all(wait_until(lambda u=u: ping(u), 15) for u in urls), "a Redis did not start"
    yield urls
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _sets_and_bytes(url: str) -> tuple[int, int]:
    client = redis.Redis.from_url(url)
    return (client.info("commandstats").get("cmdstat_set", {}).get("calls", 0),
            client.info("stats")["total_net_input_bytes"])


def test_pixels_go_to_their_shards_and_never_through_the_broker(servers, tmp_path):
    broker, *shards = servers
    svc = ServiceProcess({"REDIS_URL": broker, "PIXELS_REDIS_URLS": ",".join(shards), "MODEL": "mobilenet_v1_0.75",
                          "MODEL_WEIGHTS": str(MOBILENET_FILE), "CLASS_INDEX": str(CLASS_INDEX),
                          "BATCH_SIZE": "8", "API_WORKERS": "1", "UPLOAD_DIR": str(tmp_path / "uploads")},
                         tmp_path / "service.log").start()
    try:
        photos = labelled_photos()[:12]
        shard_before = [_sets_and_bytes(u) for u in shards]
        broker_before = _sets_and_bytes(broker)[1]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda r: httpx.post(svc.url + "/predict", timeout=60, files={
                "image": (Path(r["path"]).name, (SHARED / r["path"]).read_bytes())}), photos))
        assert [a.status_code for a in answers] == [200] * len(photos), [a.text for a in answers]
        assert [a.json()["predictions"][0]["class_id"] for a in answers] == [int(r["expected_class_id"])
                                                                           for r in photos]
        shard_after = [_sets_and_bytes(u) for u in shards]
        stored = [after[0] - before[0] for before, after in zip(shard_before, shard_after)]
        assert sum(stored) == len(photos) and all(n > 0 for n in stored), stored  # each image on one shard
        assert all(after[1] - before[1] >= n * PIXELS for before, after, n in zip(shard_before, shard_after, stored))
        # The broker got the messages and the uploads' records, not 12 x 150 KB of pixels.
        assert _sets_and_bytes(broker)[1] - broker_before < PIXELS

        job = httpx.post(svc.url + "/jobs", timeout=60, files=[
            ("images", (Path(r["path"]).name, (SHARED / r["path"]).read_bytes())) for r in photos[:4]])
        assert job.status_code == 202, job.text
        body = finished_job(svc.url, job.headers["Location"])
        assert body["status"] == "SUCCESS", body
        assert [i["predictions"][0]["class_id"] for i in body["result"]["items"]] == \
               [int(r["expected_class_id"]) for r in photos[:4]]
        for url in (broker, *shards):  # answered pixels are deleted wherever they were
            assert not list(redis.Redis.from_url(url).scan_iter(match=PIXELS_PREFIX + "*"))
    finally:
        assert svc.stop() == 0, svc.log_tail()
