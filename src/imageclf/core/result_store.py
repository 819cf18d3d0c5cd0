"""Reading task results straight from Redis, where the workers' result backend stores them.

Used by the API and by the job drivers (which gather the results of a job's images).
The API does not use Celery's Redis result backend: it subscribes to every task it
sends on one pub/sub connection shared by all threads, which is not thread-safe
(and costs two round trips a request). Celery stores each result as JSON under
`celery-task-meta-<id>` and publishes it on that key; reading it is all we need.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import redis

RESULT_KEY_PREFIX = "celery-task-meta-"
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def read_meta(client: redis.Redis, task_id: str) -> dict[str, Any]:
    """The stored {"status", "result", ...} of `task_id`; PENDING while nothing is stored."""
    raw = client.get(RESULT_KEY_PREFIX + task_id)
    if raw is None:
        return {"status": "PENDING", "result": None}
    return json.loads(raw)


def store_success(pipe: redis.client.Pipeline, task_id: str, result: dict[str, Any], ttl_s: int) -> None:
    """Queue on `pipe` what Celery's Redis backend writes for a successful task: its meta, then a publish.

    The model worker stores a whole batch's answers this way in one round trip; Celery's
    mark_as_done takes two per request (it reads the key before writing it).
    """
    meta = json.dumps({"status": "SUCCESS", "result": result, "traceback": None, "children": [],
                       "date_done": datetime.now(timezone.utc).isoformat(), "task_id": task_id})
    key = RESULT_KEY_PREFIX + task_id
    pipe.set(key, meta, ex=ttl_s)
    pipe.publish(key, meta)


def failure_message(meta: dict[str, Any]) -> str:
    """`ExcType: message` from a FAILURE meta (Celery's JSON form of the exception)."""
    exc = meta.get("result")
    if isinstance(exc, dict) and "exc_type" in exc:
        message = exc.get("exc_message")
        if isinstance(message, (list, tuple)):
            message = " ".join(str(part) for part in message)
        return f"{exc['exc_type']}: {message}"
    return str(exc)
