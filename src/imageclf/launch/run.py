"""`make run`: Redis and PostgreSQL (embedded when REDIS_URL and DATABASE_URL are unset), the workers, Flower
and the API, in the foreground.

Ctrl-C or SIGTERM stops everything it started. A part that dies is started again, as a
process supervisor would, after a backoff that doubles with each death in the last minute
(1, 2, 4, 8 s), with a log line saying how it ended; the others keep serving meanwhile. The
embedded Redis comes back on its port from its append-only file (a write reaches the file
before its reply leaves Redis, so a killed Redis loses nothing it acknowledged). A part that
dies five times within a minute stops everything with the reason and a non-zero exit code,
for a supervisor above (systemd, a container runtime) to see. The workers' supervisor
(imageclf.launch.start_workers) restarts the workers themselves; when it exits because no model
can be served, so does this.
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

from imageclf import settings
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import (
    GaveUp,
    ProcessGroup,
    RestartPolicy,
    Stop,
    exit_reason,
    install_stop_handlers,
    log,
    returning_malloc,
    wait_until,
)

#: imageclf.launch.start_workers' exit code when no model can be served: restarting it would only fail again.
_NOTHING_TO_SERVE = 1


def _ready(api_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(api_url + "/readyz", timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Parts:
    """The parts this launcher started, by name, and how to start each again."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self.commands: dict[str, tuple[list[str], dict[str, str] | None, str | None]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, user: str | None = None) -> None:
        self.commands[name] = (argv, env, user)
        self.group.start(name, argv, env, user=user)

    def restart(self, name: str, position: int) -> None:
        argv, env, user = self.commands[name]
        self.group.start(name, argv, env, position=position, user=user)


def start_all(group: Parts, metrics_dir: str) -> str:
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
    if settings.PREDICTION_LOG:
        env["DATABASE_URL"] = _database(group)

    group.start("workers", [sys.executable, "-m", "imageclf.launch.start_workers"], env)

    flower = [sys.executable, "-m", "celery", "-A", "imageclf.core.celery_app:celery_app", "flower",
              "--address=127.0.0.1", f"--port={settings.FLOWER_PORT}", f"--max_tasks={settings.FLOWER_MAX_TASKS}"]
    if settings.FLOWER_BASIC_AUTH:
        flower.append(f"--basic-auth={settings.FLOWER_BASIC_AUTH}")
    group.start("flower", flower, env)
    log("flower", f"listening on http://127.0.0.1:{settings.FLOWER_PORT}")

    # The API never touches a GPU; its gunicorn processes add up their metrics in a fresh folder.
    api_env = returning_malloc({**env, "CUDA_VISIBLE_DEVICES": "", "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    group.start("api", [sys.executable, "-m", "gunicorn", "--workers", str(settings.API_WORKERS),
                        "--threads", str(settings.API_THREADS), "--bind", f"{settings.HOST}:{settings.PORT}",
                        "--log-level", "warning", "imageclf.api:create_app()"], api_env)
    api_url = f"http://{settings.HOST}:{settings.PORT}"
    log("api", f"listening on {api_url} (POST /predict, POST /jobs, GET /result/<id>, /v2/..., /readyz, /metrics)")
    group.start("grpc", [sys.executable, "-m", "imageclf.api.grpc_server"], api_env)
    log("grpc", f"Open Inference Protocol (inference.GRPCInferenceService) on {settings.HOST}:{settings.GRPC_PORT}")
    return api_url


def restart_dead(parts: Parts, policy: RestartPolicy) -> None:
    """Start again every part that died (after its backoff); raises GaveUp for one that cannot go on."""
    for name, proc in parts.group.exited():
        position = [p for _, p in parts.group.children].index(proc)
        parts.group.stop_one(name, proc)  # reaps what it left in its process group
        if name == "workers" and proc.returncode == _NOTHING_TO_SERVE:
            raise GaveUp("no model can be served (the workers' log says why)")
        try:
            backoff_s = policy.backoff_after_death(name)
        except GaveUp as exc:
            raise GaveUp(f"{exc}, last {exit_reason(proc.returncode)}") from None
        log(name, f"{exit_reason(proc.returncode)}; restarting in {backoff_s:g} s")
        time.sleep(backoff_s)
        parts.restart(name, position)


def _database(group: Parts) -> str:
    """DATABASE_URL, or the embedded PostgreSQL started here; its schema brought up to date."""
    url = settings.DATABASE_URL
    if not url:
        from imageclf.launch import postgres_server

        data_dir = settings.POSTGRES_DATA_DIR
        user = postgres_server.prepare(data_dir)
        port = free_port(5432)
        url = postgres_server.database_url(port)
        group.start("postgres", postgres_server.postgres_argv(port, data_dir), user=user)
        if not wait_until(lambda: postgres_server.accepting(url), 30):
            raise RuntimeError("the embedded PostgreSQL did not start")
        log("postgres", f"listening on {url} (embedded; data in {data_dir}/)")
    else:
        log("postgres", "using DATABASE_URL")
    import sqlalchemy as sa

    from imageclf.core.database import migrate, sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return url


def main() -> int:
    install_stop_handlers()
    group = ProcessGroup()
    parts = Parts(group)
    policy = RestartPolicy()
    code = 0
    metrics_dir = tempfile.mkdtemp(prefix="imageclf-metrics-")
    try:
        api_url = start_all(parts, metrics_dir)
        announced = False
        while True:
            restart_dead(parts, policy)
            if not announced and (status := _ready(api_url)) and status.get("ready"):
                served = ", ".join(f"{name} by {n} worker process(es)" for name, n in status["models"].items())
                log("api", f"ready: {served}, {status['decoders']} decoder process(es)")
                announced = True
            time.sleep(0.5)
    except GaveUp as exc:
        log("run", f"{exc}; stopping everything")
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
