"""With no worker running: /predict answers 202 within its timeout, /readyz says not ready,
and past MAX_QUEUE_DEPTH new work is refused with 503 + Retry-After instead of piling up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from scripts.redis_server import ping, redis_argv
from scripts.supervise import wait_until
from tests.helpers import ROOT, SHARED, free_port, labelled_photos

DEPTH = 3


@pytest.fixture(scope="module")
def api_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis and a gunicorn API, and no worker at all."""
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    server = subprocess.Popen(redis_argv(redis_port, str(tmp_path_factory.mktemp("redis-alone")), durable=False))
    assert wait_until(lambda: ping(redis_url), 15)
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL": "mobilenet_v1_0.75", "MAX_QUEUE_DEPTH": str(DEPTH),
           "CUDA_VISIBLE_DEVICES": ""}
    api = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "8",
                            "--bind", f"127.0.0.1:{port}", "api:create_app()"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, 30), "the API did not start"
    restart = {"server": server}

    def redis_down_then_up(check_while_down) -> None:
        restart["server"].terminate()
        restart["server"].wait(10)
        try:
            check_while_down()
        finally:
            restart["server"] = subprocess.Popen(redis_argv(redis_port, str(tmp_path_factory.mktemp("redis-again")),
                                                            durable=False))
            assert wait_until(lambda: ping(redis_url), 15)

    yield url, redis.Redis.from_url(redis_url), redis_down_then_up
    api.terminate()
    api.wait(20)
    restart["server"].terminate()
    restart["server"].wait(10)


def post(url: str, timeout: str) -> httpx.Response:
    path = SHARED / labelled_photos()[0]["path"]
    return httpx.post(url + "/predict", params={"timeout": timeout}, files={"image": path.read_bytes()}, timeout=30)


def test_readyz_says_not_ready_and_why(api_alone):
    url, _, _ = api_alone
    response = httpx.get(url + "/readyz", timeout=10)
    assert response.status_code == 503
    assert response.json()["ready"] is False and "no worker" in response.json()["reason"]


def test_predict_answers_202_within_its_timeout_and_backpressure_refuses_past_the_depth(api_alone):
    url, client, _ = api_alone
    for _ in range(DEPTH):
        start = time.monotonic()
        response = post(url, "0.5")
        assert response.status_code == 202, response.text
        assert time.monotonic() - start < 5
        assert httpx.get(url + response.json()["result_url"], timeout=10).json()["status"] == "PENDING"
    refused = post(url, "0.5")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "MAX_QUEUE_DEPTH" in refused.json()["error"]
    assert client.llen("interactive") == DEPTH, "accepted work must stay queued; refused work must not be"


def test_redis_down_is_a_quick_503_and_the_api_recovers_by_itself(api_alone):
    url, client, redis_down_then_up = api_alone

    def while_down() -> None:
        for call in (lambda: post(url, "1"), lambda: httpx.get(url + "/result/some-id", timeout=30),
                     lambda: httpx.get(url + "/readyz", timeout=30)):
            start = time.monotonic()
            response = call()
            assert response.status_code == 503, response.text
            assert time.monotonic() - start < 15, "a request hung while Redis was down"
            body = response.json()
            assert body.get("success") is False or body.get("ready") is False
            assert "Traceback" not in response.text

    redis_down_then_up(while_down)
    client.delete("interactive")  # the new Redis is empty anyway; be explicit about the depth
    assert post(url, "0.2").status_code == 202, "the API did not recover after Redis came back"
