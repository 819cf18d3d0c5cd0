"""A request whose task message was lost is queued again (imageclf.core.request_watch), against a real Redis: the API's
script records it, a stored answer forgets it, and the sweep sends again only what is neither queued, held by a
worker, answered nor expired."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from imageclf.core.celery_app import celery_app
from imageclf.core.payloads import MESSAGES_KEY, PIXELS_PREFIX, WATCH_KEY, drop_pixels, enqueue_classify
from imageclf.core.request_watch import count_resent, resend_lost
from imageclf.core.result_store import RESULT_KEY_PREFIX

OLDER_THAN_S = 30.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A database of its own: the session's service sweeps database 0."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/6")
    client.flushdb()
    yield client
    client.flushdb()


def send(client: redis.Redis, queue: str, watched: bool = True) -> str:
    task_id = str(uuid.uuid4())
    enqueue_classify(celery_app, client, task_id, b"\0" * 12, (2, 2), 5, 600, queue=queue, watched=watched)
    return task_id


def age(client: redis.Redis, task_id: str, seconds: float) -> None:
    client.zadd(WATCH_KEY, {task_id: time.time() - seconds}, xx=True)


def test_a_request_whose_message_is_nowhere_is_queued_again_once(client):
    queue = "interactive.m"
    task_id = send(client, queue)
    [message] = client.lrange(queue, 0, -1)
    assert client.zscore(WATCH_KEY, task_id) is not None and task_id.encode() in client.hget(MESSAGES_KEY, task_id)

    age(client, task_id, OLDER_THAN_S + 1)
    assert resend_lost(client, OLDER_THAN_S) == []  # still queued: waiting its turn, not lost
    client.rpop(queue)  # taken by a worker that died before recording it
    client.hset("unacked", "a-tag", json.dumps([json.loads(message), "", queue]))
    age(client, task_id, OLDER_THAN_S + 1)
    assert resend_lost(client, OLDER_THAN_S) == []  # held by a worker: it renews it, or the broker restores it
    client.hdel("unacked", "a-tag")
    age(client, task_id, OLDER_THAN_S + 1)
    before = count_resent(client)
    assert resend_lost(client, OLDER_THAN_S) == [task_id]
    assert client.lrange(queue, 0, -1) == [message] and count_resent(client) == before + 1
    client.rpop(queue)
    assert resend_lost(client, OLDER_THAN_S) == []  # looked at again only another OLDER_THAN_S later


def test_answered_expired_and_unwatched_requests_are_never_sent_again(client):
    queue = "interactive.m"
    answered, expired, young = send(client, queue), send(client, queue), send(client, queue)
    # A job's items have their own recovery (imageclf.workers.jobs.driver).
    job_item = send(client, "bulk.m", watched=False)
    assert client.zscore(WATCH_KEY, job_item) is None
    client.delete(queue, "bulk.m")  # every message lost
    client.set(RESULT_KEY_PREFIX + answered, json.dumps({"status": "SUCCESS"}))
    client.delete(PIXELS_PREFIX + expired)
    for task_id in (answered, expired):
        age(client, task_id, OLDER_THAN_S + 1)
    assert resend_lost(client, OLDER_THAN_S) == []
    assert client.zrange(WATCH_KEY, 0, -1) == [young.encode()] and client.hkeys(MESSAGES_KEY) == [young.encode()]
    with client.pipeline(transaction=True) as pipe:  # a model worker stores the answer and drops the pixels
        drop_pixels(pipe, [PIXELS_PREFIX + young])
        pipe.execute()
    assert client.zcard(WATCH_KEY) == 0 and client.hlen(MESSAGES_KEY) == 0
