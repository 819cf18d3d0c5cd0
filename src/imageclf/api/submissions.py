"""Issuing task ids, sending work to the queue and shaping stored results for clients.

Celery says PENDING for any id, so every id this service issues is recorded in
Redis (with the results' TTL): GET /result answers 404 for the rest.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery
from flask import current_app, g
from kombu.exceptions import OperationalError

from imageclf import settings
from imageclf.api.auth import ANONYMOUS
from imageclf.api.errors import APIError
from imageclf.api.waiter import ResultWaiter
from imageclf.core import tracing
from imageclf.core.payloads import ISSUED_PREFIX, QueueFull, enqueue_classify
from imageclf.core.result_store import read_meta


def _celery() -> Celery:
    return current_app.extensions["celery"]


def redis_client() -> redis.Redis:
    return current_app.extensions["redis"]


@contextmanager
def queue_unavailable() -> Iterator[None]:
    """Turn Redis or broker errors into a 503 that tells the client to retry."""
    try:
        yield
    except (redis.RedisError, OperationalError) as exc:
        raise APIError(503, f"the queue is unavailable, try again later ({type(exc).__name__})",
                       {"Retry-After": "5"}) from None


def submit_classify(pixels: bytes, size: tuple[int, int], top: int, model: str,
                    expires_at: float | None = None, probabilities: bool = False,
                    version: int | None = None, pinned: bool = False, shadow: int | None = None,
                    route: str = "predict") -> str:
    """Queue one image for the batched classify task under a new random id, recorded as issued in the same
    script (see enqueue_classify); the waiter looks out for its result before it is sent. `version`,
    `pinned` and `shadow` are the request's route (imageclf.api.models.route); `route` names the endpoint in the
    prediction log."""
    task_id = str(uuid.uuid4())
    waiter = _waiter()
    waiter.expect(task_id)
    trace = tracing.carrier()  # the request's span: the worker's spans are its children, beside `enqueue`
    try:
        with queue_unavailable(), tracing.span("enqueue", **{"imageclf.task_id": task_id}):
            try:
                confirmed = enqueue_classify(
                    _celery(), redis_client(), task_id, pixels, size, top, settings.RESULT_TTL_S,
                    queue=settings.interactive_queue(model), expires_at=expires_at,
                    max_depth=settings.MAX_QUEUE_DEPTH, probabilities=probabilities,
                    issued=_issued_record({"kind": "predict", "model": model}),
                    wait_replicas=settings.REDIS_WAIT_REPLICAS, wait_ms=settings.REDIS_WAIT_MS,
                    version=version, pinned=pinned, shadow=shadow, trace=trace, watched=True,
                    route=route, key=key_id())
            except QueueFull as full:
                raise overloaded(full.depth) from None
        _check_replicas(confirmed)
    except APIError:
        waiter.forget(task_id)
        raise
    return task_id


def key_id() -> str | None:
    """The caller's key id (a hash of the key: never the key), None without API_KEYS."""
    owner = g.get("owner")
    return None if owner in (None, ANONYMOUS) else str(owner)


def _issued_record(record: dict[str, Any]) -> str:
    return json.dumps({**record, "owner": g.owner, "created": time.time()})


def record_accepted(task_id: str, record: dict[str, Any]) -> None:
    """Record an id issued to the caller, once its work is queued, as accepted.

    With REDIS_WAIT_REPLICAS, the record is written and then waited for on a replica (Redis WAIT):
    replication keeps order, so a replica holding it holds the work queued before it too, and a
    failover cannot lose work the client was told was accepted. Not confirmed in REDIS_WAIT_MS: 503
    (the work may still run; a retry may run it twice, at least once is the promise).
    """
    with queue_unavailable(), redis_client().pipeline(transaction=False) as pipe:
        pipe.set(ISSUED_PREFIX + task_id, _issued_record(record), ex=settings.RESULT_TTL_S)
        if settings.REDIS_WAIT_REPLICAS:
            pipe.wait(settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_MS)
        replies = pipe.execute()
    _check_replicas(replies[-1] if settings.REDIS_WAIT_REPLICAS else 0)


def _check_replicas(confirmed: int) -> None:
    """503 when fewer than REDIS_WAIT_REPLICAS replicas confirmed what was just written."""
    if confirmed < settings.REDIS_WAIT_REPLICAS:
        raise APIError(503, f"queued, but {confirmed} of {settings.REDIS_WAIT_REPLICAS} Redis replicas confirmed it "
                            f"within {settings.REDIS_WAIT_MS} ms (REDIS_WAIT_REPLICAS); retry later",
                       {"Retry-After": "2"})


def overloaded(depth: int) -> APIError:
    """503 + Retry-After instead of piling work up without bound when workers cannot keep up."""
    return APIError(503, f"the service is overloaded: {depth} requests are waiting (MAX_QUEUE_DEPTH="
                         f"{settings.MAX_QUEUE_DEPTH}); retry later", {"Retry-After": "5"})


def refuse_when_full(queue: str) -> None:
    """Raise `overloaded` when `queue` already holds MAX_QUEUE_DEPTH messages."""
    depth = redis_client().llen(queue)
    if depth >= settings.MAX_QUEUE_DEPTH:
        raise overloaded(depth)


def issued(task_id: str) -> dict[str, Any] | None:
    """What was recorded when `task_id` was issued to the caller's key, or None (never issued, or another key's)."""
    try:
        record = redis_client().get(ISSUED_PREFIX + task_id)
    except redis.RedisError:
        raise APIError(503, "the result store is unavailable, try again later", {"Retry-After": "5"}) from None
    info = json.loads(record) if record else None
    return info if info and info.get("owner") == g.owner else None


def fetch_meta(task_id: str) -> dict[str, Any]:
    """The task's stored state and result."""
    try:
        return read_meta(redis_client(), task_id)
    except redis.RedisError:
        raise APIError(503, "the result store is unavailable, try again later", {"Retry-After": "5"}) from None


def _waiter() -> ResultWaiter:
    return current_app.extensions["result_waiter"]


def wait_for(task_id: str, timeout: float) -> dict[str, Any]:
    """The task's stored state once it ended or `timeout` passed; an answer is traced as `result`, from the
    worker's end of its batch to now."""
    meta = _waiter().wait(task_id, timeout, lambda: fetch_meta(task_id))
    done_at = (meta.get("result") or {}).get("done_at") if meta["status"] == "SUCCESS" else None
    if done_at:
        tracing.record("result", done_at, time.time())
    return meta


