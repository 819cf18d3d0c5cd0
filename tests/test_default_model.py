"""The default model's path: `make run` with no REDIS_URL (embedded Redis) serving ResNet50.

No ResNet50 ImageNet weights can be had offline, so MODEL_WEIGHTS=random proves the
plumbing and the output shape (its labels mean nothing). Also what `make run` exposes:
every port it opens is on 127.0.0.1, and Flower asks for the FLOWER_BASIC_AUTH password.
"""

from __future__ import annotations

import httpx
import psutil

from imageclf.launch.redis_server import ping
from imageclf.launch.service_process import ServiceProcess
from tests.helpers import CLASS_INDEX, SHARED, labelled_photos


def test_resnet50_random_weights_serves_1000_class_probabilities_and_stops_cleanly(tmp_path):
    svc = ServiceProcess(
        env={"REDIS_URL": "", "MODEL": "resnet50", "MODEL_WEIGHTS": "random", "CLASS_INDEX": str(CLASS_INDEX),
             "BATCH_SIZE": "4", "BATCH_WAIT_MS": "20",
             "REDIS_DATA_DIR": str(tmp_path / "redis"), "API_WORKERS": "1", "FLOWER_BASIC_AUTH": "ops:s3cret-pw"},
        log_path=tmp_path / "resnet50-service.log",
    ).start()
    try:
        log = svc.log_tail(200)
        assert "(embedded;" in log, log
        redis_url = log.split("listening on ", 1)[1].split()[0]
        assert ping(redis_url)

        path = SHARED / labelled_photos()[0]["path"]
        with open(path, "rb") as f:
            response = httpx.post(svc.url + "/predict", params={"top": 1000}, files={"image": f}, timeout=120)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "resnet50"
        predictions = body["predictions"]
        assert len(predictions) == 1000
        assert sorted(p["class_id"] for p in predictions) == list(range(1000))
        assert abs(sum(p["probability"] for p in predictions) - 1.0) < 1e-3
        assert all(isinstance(p["label"], str) and p["label"] for p in predictions)

        assert httpx.get(svc.flower_url + "/api/workers", timeout=10).status_code == 401
        assert httpx.get(svc.flower_url + "/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx.get(svc.flower_url + "/api/workers", auth=("ops", "s3cret-pw"), timeout=10).status_code == 200
        # gRPC listens on a dual-stack socket: 127.0.0.1 shows as its IPv4-mapped form, still loopback only.
        listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)
                     for proc in psutil.Process(svc.proc.pid).children(recursive=True)
                     for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        ports = {int(redis_url.rsplit(":", 1)[1].split("/")[0]), int(svc.url.rsplit(":", 1)[1]),
                 int(svc.flower_url.rsplit(":", 1)[1]), int(svc.grpc_url.rsplit(":", 1)[1])}
        assert ports <= {port for _, port in listening}, listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, f"something listens beyond 127.0.0.1: {listening}"
    finally:
        code = svc.stop()
    assert code == 0, svc.log_tail()
    assert not ping(redis_url), "the embedded Redis outlived imageclf.launch.run"
    try:
        httpx.get(svc.url + "/healthz", timeout=2)
        raise AssertionError("the API outlived imageclf.launch.run")
    except httpx.ConnectError:
        pass
    assert (tmp_path / "redis" / "appendonlydir").exists() or any((tmp_path / "redis").glob("*.aof"))


def test_without_a_network_the_default_model_says_how_to_run_offline(tmp_path):
    """ImageNet weights that cannot be downloaded (here: every connection goes to a closed local port) fail with
    what to do instead, not only Keras' 'URL fetch failure'."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "CUDA_VISIBLE_DEVICES": ""}
    code = ("from imageclf.models.keras_model import build_keras_model\n"
            "from imageclf.models.registry import get_spec\n"
            "build_keras_model(get_spec('resnet50'), 'imagenet')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "MODEL_WEIGHTS=random" in run.stderr and "could not download resnet50's ImageNet weights" in run.stderr, \
        run.stderr[-2000:]
