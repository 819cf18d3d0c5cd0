"""`make run`: Redis (embedded when REDIS_URL is unset), the workers, Flower and the API, in the foreground.

Ctrl-C or SIGTERM stops everything it started. If any part dies, the rest are
stopped too and the exit code is non-zero, so a supervisor (systemd, a container
runtime) can restart the whole set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request

import settings
from imageclf.redis_server import free_port, ping, redis_argv
from imageclf.supervise import ProcessGroup, Stop, install_stop_handlers, log, returning_malloc, wait_until


def _ready(api_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(api_url + "/readyz", timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def start_all(group: ProcessGroup, metrics_dir: str) -> str:
    """Start every part; returns the API's base URL."""
    env = dict(os.environ)
    redis_url = settings.REDIS_URL
    if not redis_url:
        port = free_port(6379)
        redis_url = f"redis://127.0.0.1:{port}/0"
        data_dir = settings.REDIS_DATA_DIR
        group.start("redis", redis_argv(port, data_dir))
        if not wait_until(lambda: ping(redis_url), 15):
            raise RuntimeError("the embedded Redis did not start")
        log("redis", f"listening on {redis_url} (embedded; append-only file in {data_dir}/)")
    else:
        log("redis", f"using {redis_url}")
    env["REDIS_URL"] = redis_url

    group.start("workers", [sys.executable, "-m", "imageclf.start_workers"], env)

    flower = [sys.executable, "-m", "celery", "-A", "tasks", "flower",
              "--address=127.0.0.1", f"--port={settings.FLOWER_PORT}", f"--max_tasks={settings.FLOWER_MAX_TASKS}"]
    if settings.FLOWER_BASIC_AUTH:
        flower.append(f"--basic-auth={settings.FLOWER_BASIC_AUTH}")
    group.start("flower", flower, env)
    log("flower", f"listening on http://127.0.0.1:{settings.FLOWER_PORT}")

    # The API never touches a GPU; its gunicorn processes add up their metrics in a fresh folder.
    api_env = returning_malloc({**env, "CUDA_VISIBLE_DEVICES": "", "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    group.start("api", [sys.executable, "-m", "gunicorn", "--workers", str(settings.API_WORKERS),
                        "--threads", str(settings.API_THREADS), "--bind", f"{settings.HOST}:{settings.PORT}",
                        "--log-level", "warning", "api:create_app()"], api_env)
    api_url = f"http://{settings.HOST}:{settings.PORT}"
    log("api", f"listening on {api_url} (POST /predict, POST /jobs, GET /result/<id>, /v2/..., /readyz, /metrics)")
    group.start("grpc", [sys.executable, "-m", "api.grpc_server"], api_env)
    log("grpc", f"Open Inference Protocol (inference.GRPCInferenceService) on {settings.HOST}:{settings.GRPC_PORT}")
    return api_url


def main() -> int:
    install_stop_handlers()
    group = ProcessGroup()
    code = 0
    metrics_dir = tempfile.mkdtemp(prefix="imageclf-metrics-")
    try:
        api_url = start_all(group, metrics_dir)
        announced = False
        while not (dead := group.exited()):
            if not announced and (status := _ready(api_url)) and status.get("ready"):
                served = ", ".join(f"{name} by {n} worker process(es)" for name, n in status["models"].items())
                log("api", f"ready: {served}, {status['decoders']} decoder process(es)")
                announced = True
            time.sleep(0.5)
        for name, proc in dead:
            log(name, f"exited with code {proc.returncode}; stopping everything")
        code = 1
    except Stop as stop:
        log("run", f"{stop}: stopping")
    except RuntimeError as exc:
        log("run", str(exc))
        code = 1
    finally:
        group.stop_all()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log("run", "stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
