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

from imageclf.api.auth import owner_of
from imageclf.core.payloads import PIXELS_PREFIX
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import wait_until
from tests.helpers import ROOT, SHARED, grpc_health, labelled_photos, start_api

DEPTH = 3
MODEL = "mobilenet_v1_0.75"  # the API's model (start_api)
QUEUE = f"interactive.{MODEL}"
KEYS = ("key-alice-1234", "key-bob-5678")


@pytest.fixture(scope="module")
def api_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis and a gunicorn API, and no worker at all."""
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    server = subprocess.Popen(redis_argv(redis_port, str(tmp_path_factory.mktemp("redis-alone")), durable=False))
    assert wait_until(lambda: ping(redis_url), 15)
    api, url = start_api(redis_url, {"MAX_QUEUE_DEPTH": str(DEPTH)})
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


def post(url: str, timeout: str, headers: dict[str, str] | None = None) -> httpx.Response:
    path = SHARED / labelled_photos()[0]["path"]
    return httpx.post(url + "/predict", params={"timeout": timeout}, files={"image": path.read_bytes()},
                      headers=headers, timeout=30)


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
    assert client.llen(QUEUE) == DEPTH, "accepted work must stay queued; refused work must not be"
    assert len(client.keys(PIXELS_PREFIX + "*")) == DEPTH, "a refused request must store no pixels"


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
    client.delete(QUEUE)  # the new Redis is empty anyway; be explicit about the depth
    assert post(url, "0.2").status_code == 202, "the API did not recover after Redis came back"


def test_api_keys_guard_every_endpoint_and_keep_results_private(api_alone):
    url, client, _ = api_alone
    redis_port = client.connection_pool.connection_kwargs["port"]
    api, keyed = start_api(f"redis://127.0.0.1:{redis_port}/0", {"API_KEYS": ",".join(KEYS)})
    try:
        client.delete(QUEUE)
        assert post(keyed, "0").status_code == 401
        assert post(keyed, "0", {"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(keyed + "/result/x", timeout=10).status_code == 401
        assert httpx.get(keyed + "/healthz", timeout=10).status_code == 200  # health stays open

        alice = post(keyed, "0", {"Authorization": f"Bearer {KEYS[0]}"})
        assert alice.status_code == 202, alice.text
        result_url = keyed + alice.json()["result_url"]
        assert httpx.get(result_url, headers={"X-API-Key": KEYS[0]}, timeout=10).status_code == 200
        assert httpx.get(result_url, headers={"X-API-Key": KEYS[1]}, timeout=10).status_code == 404
        unauthorised = httpx.get(result_url, timeout=10)
        assert unauthorised.status_code == 401 and unauthorised.json()["success"] is False
        assert KEYS[0].encode() not in b"".join(client.get(k) or b"" for k in client.scan_iter("imageclf:issued:*"))
        metrics = httpx.get(keyed + "/metrics", headers={"X-API-Key": KEYS[1]}, timeout=10).text
        alice_id = owner_of(KEYS[0])
        assert f'imageclf_key_requests_total{{key_id="{alice_id}",status="202"}} 1.0' in metrics
        assert f'imageclf_key_requests_total{{key_id="{alice_id}",status="200"}} 1.0' in metrics
        assert KEYS[0] not in metrics and KEYS[1] not in metrics  # ids, never the keys
    finally:
        api.terminate()
        api.wait(20)


def test_open_inference_takes_keys_from_headers_and_grpc_metadata_and_refuses_past_the_depth(api_alone):
    """v2 over HTTP and gRPC: keys from headers and from metadata; a full queue is 503 and UNAVAILABLE."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    _, client, _ = api_alone
    redis_url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    grpc_port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imageclf.api.grpc_server"], cwd=ROOT, env={
        **os.environ, "REDIS_URL": redis_url, "MODEL": MODEL, "API_KEYS": ",".join(KEYS), "HOST": "127.0.0.1",
        "GRPC_PORT": str(grpc_port), "MAX_QUEUE_DEPTH": str(DEPTH), "CUDA_VISIBLE_DEVICES": ""})
    api, keyed = start_api(redis_url, {"API_KEYS": ",".join(KEYS), "MAX_QUEUE_DEPTH": str(DEPTH)})
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    key = {"authorization": f"Bearer {KEYS[0]}"}

    def grpc_live() -> bool:
        try:
            return grpc.is_server_live()
        except InferenceServerException:
            return False

    try:
        assert wait_until(grpc_live, 30), "the gRPC server did not start"
        assert not grpc.is_server_ready()  # no worker: not ready (health needs no key)
        assert grpc_health(f"127.0.0.1:{grpc_port}", "") == "NOT_SERVING"  # what /readyz says, for grpc: probes
        assert grpc_health(f"127.0.0.1:{grpc_port}", "liveness") == "SERVING"
        with pytest.raises(InferenceServerException) as err:
            grpc.get_model_metadata(MODEL)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        assert grpc.get_model_metadata(MODEL, headers=key, as_json=True)["name"] == MODEL

        client.delete(QUEUE)
        client.rpush(QUEUE, *[b"placeholder"] * DEPTH)  # a full queue, as if workers could not keep up
        stored = set(client.keys(PIXELS_PREFIX + "*"))
        pixels = grpcclient.InferInput("pixels", [1, 224, 224, 3], "UINT8")
        pixels.set_data_from_numpy(np.zeros((1, 224, 224, 3), np.uint8))
        with pytest.raises(InferenceServerException) as err:
            grpc.infer(MODEL, [pixels], headers=key)
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "MAX_QUEUE_DEPTH" in err.value.message()

        assert httpx.get(keyed + "/v2/health/live", timeout=10).status_code == 200
        assert httpx.get(keyed + "/v2/health/ready", timeout=10).status_code == 400
        request = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                               "data": [0] * (224 * 224 * 3)}]}
        infer = keyed + f"/v2/models/{MODEL}/infer"
        assert httpx.post(infer, json=request, timeout=10).status_code == 401
        refused = httpx.post(infer, json=request, headers={"X-API-Key": KEYS[1]}, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] and set(refused.json()) == {"error"}
        assert client.llen(QUEUE) == DEPTH and set(client.keys(PIXELS_PREFIX + "*")) == stored, "refused work stored"
    finally:
        client.delete(QUEUE)
        grpc.close()
        for process in (server, api):
            process.terminate()
            process.wait(20)


def test_rate_limits_and_quotas_are_shared_by_every_api_process_and_answer_429(api_alone, tmp_path):
    """Two API processes, one Redis: a key's bucket and daily quota are one; over them 429 with Retry-After and
    RateLimit-* headers (RESOURCE_EXHAUSTED over gRPC); another key is not slowed; GET /usage; the keys file."""
    import grpc as grpc_lib
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    _, client, _ = api_alone
    redis_url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("limited:rate=30/min:burst=3:daily=5\n")  # a token every 2 s
    env = {"API_KEYS": "other", "API_KEYS_FILE": str(keys_file), "MAX_QUEUE_DEPTH": "1000"}
    first, first_url = start_api(redis_url, env)
    second, second_url = start_api(redis_url, env)
    grpc_port = free_port()
    grpc_server = subprocess.Popen([sys.executable, "-m", "imageclf.api.grpc_server"], cwd=ROOT, env={
        **os.environ, "REDIS_URL": redis_url, "MODEL": MODEL, "HOST": "127.0.0.1", "GRPC_PORT": str(grpc_port),
        "CUDA_VISIBLE_DEVICES": "", **env})
    limited, other = {"X-API-Key": "limited"}, {"X-API-Key": "other"}
    client.delete(QUEUE)
    channel = grpc_lib.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        assert wait_until(lambda: _grpc_up(stub), 30)
        answers = [post(url, "0", limited) for url in (first_url, second_url, first_url)]
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
        assert answers[0].headers["RateLimit-Limit"] == "3"
        refused = post(second_url, "0", limited)  # the other process: the same bucket
        assert refused.status_code == 429 and "rate limit (0.5 images/s, burst 3)" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["RateLimit-Remaining"] == "0"
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 224, 224, 3])
        request.raw_input_contents.append(bytes(224 * 224 * 3))
        with pytest.raises(grpc_lib.RpcError) as err:
            stub.ModelInfer(request, metadata=[("x-api-key", "limited")], timeout=10)
        assert err.value.code() == grpc_lib.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in err.value.details()
        assert all(post(first_url, "0", other).status_code == 202 for _ in range(5))  # another key: no limit

        time.sleep(2.2)  # one token back
        assert [post(second_url, "0", limited).status_code for _ in range(2)] == [202, 429]
        time.sleep(2.2)
        last = post(first_url, "0", limited)  # 5 used today, 5 allowed: then the quota is spent
        assert last.status_code == 202, last.text
        time.sleep(2.2)
        spent = post(first_url, "0", limited)
        assert spent.status_code == 429 and "daily quota of 5 images is used up" in spent.json()["error"]
        usage = httpx.get(first_url + "/usage", headers=limited, timeout=10).json()
        assert usage["key_id"] == owner_of("limited") and usage["today"] == {"used": 5, "remaining": 0}
        assert usage["limits"] == {"rate_per_s": 0.5, "burst": 3.0, "daily": 5}
        assert httpx.get(first_url + "/usage", headers=other, timeout=10).json()["today"]["used"] == 0
        metrics = httpx.get(first_url + "/metrics", headers=other, timeout=10).text
        assert f'imageclf_key_requests_total{{key_id="{owner_of("limited")}",status="429"}}' in metrics

        keys_file.write_text("fresh\n")  # re-read without a restart
        assert wait_until(lambda: post(second_url, "0", {"X-API-Key": "fresh"}).status_code == 202, 10)
        assert post(second_url, "0", limited).status_code == 401
    finally:
        channel.close()
        client.delete(QUEUE)
        for process in (first, second, grpc_server):
            process.terminate()
            process.wait(20)


def _grpc_up(stub) -> bool:
    import grpc as grpc_lib
    from tritonclient.grpc import service_pb2

    try:
        return stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=2).live
    except grpc_lib.RpcError:
        return False
