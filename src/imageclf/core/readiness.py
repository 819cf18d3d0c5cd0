"""Readiness heartbeats: a worker process that has loaded and warmed its model says so in Redis.

Celery's own ping is answered by the worker's main process even while the pool
child is still loading the model, so /readyz reads these keys instead.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
from collections.abc import Callable

import redis
from celery.utils.log import get_logger

from imageclf.core.redis_clients import connect

#: Key prefix of the heartbeats; one key per serving pool process.
READY_KEY_PREFIX = "imageclf:worker:"
HEARTBEAT_S = 5.0

logger = get_logger(__name__)
_stop = threading.Event()
_wake = threading.Event()


def rss_mb() -> float:
    """This process's resident memory in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return round(pages * resource.getpagesize() / 2**20, 1)


def _beat(redis_url: str, key: str, info: Callable[[], dict]) -> None:
    client = connect(redis_url)
    while not _stop.is_set():
        _wake.clear()
        try:
            announced = {"host": socket.gethostname(), "pid": os.getpid(), **info(), "memory_mb": rss_mb()}
            client.set(key, json.dumps(announced), ex=int(3 * HEARTBEAT_S))
        except redis.RedisError as exc:
            logger.warning("readiness heartbeat failed: %s", exc)
        _wake.wait(HEARTBEAT_S)
    try:
        client.delete(key)
    except redis.RedisError:
        pass  # the key expires by itself


def start_heartbeat(redis_url: str, info: Callable[[], dict]) -> None:
    """Announce this process as ready, with what `info()` says now, until `stop_heartbeat`; a crash lets the
    key expire."""
    key = f"{READY_KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"
    threading.Thread(target=_beat, args=(redis_url, key, info), name="ready-heartbeat", daemon=True).start()


def beat_now() -> None:
    """Publish the current info at once (a model version changed) instead of at the next beat."""
    _wake.set()


def stop_heartbeat() -> None:
    _stop.set()
    _wake.set()


def live_workers(client: redis.Redis) -> list[dict]:
    """What every live worker process announced (model workers and decoders)."""
    keys = list(client.scan_iter(match=READY_KEY_PREFIX + "*", count=1000))
    return [json.loads(v) for v in client.mget(keys) if v] if keys else []
