"""Readiness heartbeats: a worker process that has loaded and warmed its model says so in Redis.

Celery's own ping is answered by the worker's main process even while the pool
child is still loading the model, so /readyz reads these keys instead.
"""

from __future__ import annotations

import json
import os
import socket
import threading

import redis
from celery.utils.log import get_logger

#: Key prefix of the heartbeats; one key per serving pool process.
READY_KEY_PREFIX = "imageclf:worker:"
HEARTBEAT_S = 5.0

logger = get_logger(__name__)
_stop = threading.Event()


def _beat(redis_url: str, key: str, info: str) -> None:
    client = redis.Redis.from_url(redis_url)
    while not _stop.is_set():
        try:
            client.set(key, info, ex=int(3 * HEARTBEAT_S))
        except redis.RedisError as exc:
            logger.warning("readiness heartbeat failed: %s", exc)
        _stop.wait(HEARTBEAT_S)
    try:
        client.delete(key)
    except redis.RedisError:
        pass  # the key expires by itself


def start_heartbeat(redis_url: str, info: dict) -> None:
    """Announce this process as ready until `stop_heartbeat`; a crash lets the key expire."""
    key = f"{READY_KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"
    threading.Thread(target=_beat, args=(redis_url, key, json.dumps(info)), name="ready-heartbeat", daemon=True).start()


def stop_heartbeat() -> None:
    _stop.set()


def live_workers(client: redis.Redis) -> list[dict]:
    """What every live worker process announced (model workers and decoders)."""
    keys = list(client.scan_iter(match=READY_KEY_PREFIX + "*", count=1000))
    return [json.loads(v) for v in client.mget(keys) if v] if keys else []
