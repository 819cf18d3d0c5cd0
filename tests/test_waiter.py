"""The API's result waiter against a real Redis: a published result is handed over without reading Redis,
and anything else on the channel falls back to reading the stored result."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import redis

from imageclf.api.waiter import ResultWaiter
from imageclf.core.result_store import RESULT_KEY_PREFIX, read_meta
from imageclf.launch.supervise import wait_until


@pytest.fixture
def subscribed(redis_url: str) -> tuple[ResultWaiter, redis.Redis]:
    """A waiter whose listener is subscribed, and a client of the same Redis."""
    client = redis.Redis.from_url(redis_url)
    waiter = ResultWaiter(redis_url)
    waiter.expect("warm-up")  # starts the listener
    waiter.forget("warm-up")
    assert wait_until(lambda: client.pubsub_numpat() >= 1 and waiter._subscribed.is_set(), 10)
    return waiter, client


def test_a_published_result_reaches_its_waiter_without_a_read(subscribed):
    waiter, client = subscribed
    task_id = str(uuid.uuid4())
    waiter.expect(task_id)
    meta = {"status": "SUCCESS", "result": {"answer": 42}, "task_id": task_id}
    threading.Timer(0.2, lambda: client.publish(RESULT_KEY_PREFIX + task_id, json.dumps(meta))).start()
    assert waiter.wait(task_id, 10, fetch=lambda: pytest.fail("read Redis although the result was published")) == meta


def test_something_else_on_the_channel_falls_back_to_the_stored_result(subscribed):
    waiter, client = subscribed
    task_id = str(uuid.uuid4())
    waiter.expect(task_id)
    key = RESULT_KEY_PREFIX + task_id
    stored = {"status": "SUCCESS", "result": {"answer": 7}, "task_id": task_id}

    def store_then_publish_garbage() -> None:
        client.set(key, json.dumps(stored), ex=60)
        client.publish(key, b"not json")

    threading.Timer(0.2, store_then_publish_garbage).start()
    assert waiter.wait(task_id, 10, fetch=lambda: read_meta(client, task_id)) == stored
    assert waiter._slots == {}  # nothing left behind
