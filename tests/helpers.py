"""Paths to the shared assets and reading their manifest."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from imageclf.launch.redis_server import free_port
from imageclf.launch.supervise import wait_until

#: The checkout the tests run from.
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "assets"
MOBILENET_FILE = SHARED / "models" / "mobilenet_v1_0.75_224_imagenet.keras"
CLASS_INDEX = SHARED / "imagenet_class_index.json"
FLOWER_AUTH = "flower:test-password"  # the test service's Flower asks for it
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container, with no network beyond localhost: no sandbox, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


#: What the service and the tests tell the S3 server (moto's accepts any credentials).
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def labelled_photos() -> list[dict]:
    """MANIFEST rows of photos with an unambiguous expected class."""
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    photos = [r for r in rows if r["kind"] == "image" and r["expected_class_id"]]
    assert photos, "MANIFEST.tsv lists no labelled photos"
    return photos


def finished_job(url: str, location: str, timeout_s: float = 120) -> dict:
    """GET `location` until the job is SUCCESS or FAILURE (failing the test after `timeout_s`); its body."""
    deadline = time.monotonic() + timeout_s
    while (body := httpx.get(url + location, timeout=10).json())["status"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline, f"the job at {location} did not finish within {timeout_s:g} s"
        time.sleep(0.2)
    return body


def start_api(redis_url: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A gunicorn API process on a free port, once it answers /healthz."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL": "mobilenet_v1_0.75", "CUDA_VISIBLE_DEVICES": "", **env}
    api = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "8",
                            "--bind", f"127.0.0.1:{port}", "imageclf.api:create_app()"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, 30), "the API did not start"
    return api, url


def screenshot(page, name: str) -> None:
    """With WEB_SCREENSHOTS=docs/screenshots, save the page as <name>.png there (docs/getting-started.md shows
    them)."""
    folder = os.environ.get("WEB_SCREENSHOTS")
    if folder:
        (ROOT / folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ROOT / folder / f"{name}.png"), full_page=True)


def grpc_health(address: str, service: str) -> str:
    """grpc.health.v1.Health/Check's status name for `service` on the gRPC server at `address`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


@contextmanager
def embedded_postgres(folder: Path) -> Iterator[str]:
    """A throwaway embedded PostgreSQL in `folder`, its schema migrated; yields its URL."""
    import sqlalchemy as sa

    from imageclf.core import database
    from imageclf.launch import postgres_server

    user = postgres_server.prepare(str(folder))
    server = subprocess.Popen(postgres_server.postgres_argv(port := free_port(), str(folder)), user=user)
    url = postgres_server.database_url(port)
    try:
        assert wait_until(lambda: postgres_server.accepting(url), 30)
        engine = sa.create_engine(database.sqlalchemy_url(url))
        database.migrate(engine)
        engine.dispose()
        yield url
    finally:
        server.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
        server.wait(60)
