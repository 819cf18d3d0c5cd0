"""Wait for task results without hammering Redis: one pub/sub listener per API process.

Celery's Redis backend publishes every stored result on the result's key, the whole
stored meta as the message. A single background thread subscribes to them and hands each
one to the request thread waiting on that id, which reads nothing from Redis: an id
announced with `expect()` before its task is sent cannot be published before the
listener looks out for it. A slow fallback poll covers a dropped subscription and ids
waited on without `expect()`. (Waiting with AsyncResult.get() in many threads is not
thread-safe with this backend.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from imageclf.core.redis_clients import connect
from imageclf.core.result_store import READY_STATES, RESULT_KEY_PREFIX

_FALLBACK_POLL_S = 0.5
#: An expected id nobody waited on (its request failed between sending and waiting) is dropped after this.
_UNCLAIMED_S = 600.0


class _Slot:
    """Where the listener leaves one id's published meta, and the event that wakes its waiter."""

    __slots__ = ("event", "meta", "covered", "created")

    def __init__(self, covered: bool) -> None:
        self.event = threading.Event()
        self.meta: dict[str, Any] | None = None
        #: Whether the listener was subscribed before the task was sent: then nothing can be missed.
        self.covered = covered
        self.created = time.monotonic()


def _meta(data: bytes) -> dict[str, Any] | None:
    """A published result meta; None for anything else on the channel (its waiter then reads the key)."""
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and "status" in meta else None


class ResultWaiter:
    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._expected = 0

    def _ensure_listener(self) -> None:
        # Started lazily so it runs in the process that serves (gunicorn forks after import).
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(target=self._listen, name="result-listener", daemon=True)
                self._listener.start()

    def _listen(self) -> None:
        while True:
            try:
                pubsub = connect(self._redis_url).pubsub()
                pubsub.psubscribe(RESULT_KEY_PREFIX + "*")
                for message in pubsub.listen():
                    if message["type"] == "psubscribe":
                        self._subscribed.set()
                        continue
                    if message["type"] != "pmessage":
                        continue
                    task_id = message["channel"].decode()[len(RESULT_KEY_PREFIX):]
                    with self._lock:
                        slot = self._slots.get(task_id)
                    if slot is not None:
                        slot.meta = _meta(message["data"])
                        slot.event.set()
            except redis.RedisError:
                self._subscribed.clear()  # waiters poll until the subscription is back
                time.sleep(1.0)

    def expect(self, task_id: str) -> None:
        """Look out for `task_id`'s result; call before its task is sent, so wait() need not read Redis."""
        self._ensure_listener()
        with self._lock:
            self._slots.setdefault(task_id, _Slot(self._subscribed.is_set()))
            self._expected += 1
            if self._expected % 1000 == 0:
                old = time.monotonic() - _UNCLAIMED_S
                for stale in [k for k, slot in self._slots.items() if slot.created < old]:
                    del self._slots[stale]

    def forget(self, task_id: str) -> None:
        """Stop looking out for an expected id whose task was not sent after all."""
        with self._lock:
            self._slots.pop(task_id, None)

    def wait(self, task_id: str, timeout: float, fetch: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The task's meta once it is ready (published, or `fetch()`ed when no publish came within the
        fallback poll), or its last unready value after `timeout` seconds."""
        self._ensure_listener()
        with self._lock:
            slot = self._slots.get(task_id)
            if slot is None:
                slot = self._slots[task_id] = _Slot(covered=False)
        deadline = time.monotonic() + timeout
        try:
            meta = slot.meta or (None if slot.covered else fetch())
            while True:
                meta = slot.meta or meta
                if meta is not None and meta["status"] in READY_STATES:
                    return meta
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return meta if meta is not None else fetch()
                slot.event.wait(min(remaining, _FALLBACK_POLL_S))
                slot.event.clear()
                if slot.meta is None:  # no publish within the fallback poll (or not a result's): read it
                    meta = fetch()
        finally:
            with self._lock:
                self._slots.pop(task_id, None)
