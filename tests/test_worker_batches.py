"""The batched task itself, driven through the real broker: a bad payload fails alone."""

from __future__ import annotations

import time

import pytest
from celery import Celery

from api.result_store import READY_STATES, failure_message, read_meta
from models.images import decode_to_pixels
from tests.helpers import SHARED, labelled_photos


@pytest.fixture(scope="module")
def client_app(service, redis_url: str) -> Celery:
    """A send-only client like the API's; results are read from Redis directly."""
    app = Celery("test-client")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=None)
    return app


def wait_all(client, ids: list[str], timeout_s: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        metas = [read_meta(client, i) for i in ids]
        if all(m["status"] in READY_STATES for m in metas):
            return metas
        assert time.monotonic() < deadline, "some requests were never answered"
        time.sleep(0.05)


def test_an_undecodable_payload_fails_alone_and_its_batch_mates_are_answered(client_app, redis_client):
    photos = labelled_photos()[:8]
    pixels = [decode_to_pixels((SHARED / r["path"]).read_bytes(), 224, 10**9) for r in photos]
    send = lambda kwargs: client_app.send_task("classify", kwargs=kwargs).id  # noqa: E731
    # Keep the worker busy so the next burst accumulates into one batch behind it.
    busy = [send({"pixels": pixels[i % 8], "top": 1}) for i in range(32)]
    before = [send({"pixels": p, "top": 1}) for p in pixels]
    bad = send({"pixels": b"\x00" * 1000, "top": 1})
    after = [send({"pixels": p, "top": 1}) for p in pixels]
    metas = wait_all(redis_client, [*busy, *before, bad, *after])
    before_m, bad_m, after_m = metas[32:40], metas[40], metas[41:]

    assert bad_m["status"] == "FAILURE"
    assert "1000 bytes" in failure_message(bad_m)
    for row, meta in zip(photos * 2, before_m + after_m):
        assert meta["status"] == "SUCCESS"
        assert meta["result"]["predictions"][0]["class_id"] == int(row["expected_class_id"])
    # Batches are consecutive slices of the queue: the bad payload's neighbours shared its batch.
    assert before_m[-1]["result"]["batch_id"] == after_m[0]["result"]["batch_id"]
