"""Wait for task results without hammering Redis: one pub/sub listener per API process.

Celery's Redis backend publishes every stored result on the result's key. A
single background thread subscribes to them and wakes the request threads that
wait on those ids; a slow fallback poll covers a dropped subscription. (Waiting
with AsyncResult.get() in many threads is not thread-safe with this backend.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tasks.redis_clients import connect
from tasks.result_store import READY_STATES, RESULT_KEY_PREFIX

_FALLBACK_POLL_S = 0.5


class ResultWaiter:
    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None

    def _ensure_listener(self) -> None:
        # Started lazily so it runs in the process that serves (gunicorn forks after import).
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(target=self._listen, name="result-listener", daemon=True)
                self._listener.start()

    def _listen(self) -> None:
        while True:
            try:
                pubsub = connect(self._redis_url).pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(RESULT_KEY_PREFIX + "*")
                for message in pubsub.listen():
                    task_id = message["channel"].decode()[len(RESULT_KEY_PREFIX):]
                    with self._lock:
                        event = self._events.get(task_id)
                    if event is not None:
                        event.set()
            except redis.RedisError:
                time.sleep(1.0)  # Redis is away: waiters fall back to polling until it returns.

    def wait(self, task_id: str, timeout: float, fetch: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """`fetch()`'s task meta once it is ready, or its last (unready) value after `timeout` seconds."""
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._events[task_id] = event
        deadline = time.monotonic() + timeout
        try:
            while True:
                meta = fetch()
                remaining = deadline - time.monotonic()
                if meta["status"] in READY_STATES or remaining <= 0:
                    return meta
                event.wait(min(remaining, _FALLBACK_POLL_S))
                event.clear()
        finally:
            with self._lock:
                self._events.pop(task_id, None)
