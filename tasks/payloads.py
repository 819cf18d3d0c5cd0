"""How an image travels from the API to a worker: raw pixels under their own Redis key.

The task message carries only the key. kombu's Redis transport wraps every body in
base64 inside JSON and, with acks_late, JSON-encodes it again into its unacked hash,
so 150 KB of pixels in the message cost 204 KB of Redis and several milliseconds of
encoding in the worker's consumer per image (measured). A binary key costs 150 KB and
one MGET per batch; the worker deletes it once the request's result is stored.
"""

from __future__ import annotations

import time

import redis
from celery import Celery

PIXELS_PREFIX = "imageclf:pixels:"
#: A request sent with `probabilities=True` gets its whole class-probability row stored here too, as
#: float32 bytes (4 KB for 1000 classes, where JSON would take 20 KB in the result and its publish).
PROBABILITIES_PREFIX = "imageclf:probabilities:"
#: Every id the API hands out (requests and jobs) is recorded under this prefix with its owner.
ISSUED_PREFIX = "imageclf:issued:"


class QueueFull(Exception):
    """The queue already holds `depth` messages, at or past the sender's limit; nothing was stored."""

    def __init__(self, queue: str, depth: int) -> None:
        super().__init__(f"{queue} holds {depth} messages")
        self.queue = queue
        self.depth = depth


# KEYS: the queue, the pixels' key; ARGV: the depth limit, the TTL, the pixels. One round trip checks the
# queue's depth and stores the pixels only when there is room.
_STORE_UNLESS_FULL = """
local depth = redis.call('LLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then return depth end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2])
return -1
"""


def enqueue_classify(celery: Celery, client: redis.Redis, task_id: str, pixels: bytes, size: tuple[int, int],
                     top: int, ttl_s: int, queue: str | None = None,
                     expires_at: float | None = None, max_depth: int | None = None,
                     probabilities: bool = False) -> None:
    """Store the pixels ((height, width) = `size`, RGB) with a TTL, then queue the classify task.

    With `max_depth`, raises QueueFull instead, storing nothing, when `queue` already holds that many
    messages (checked in the same round trip). A request still waiting at `expires_at` (epoch seconds)
    is skipped by the worker, not computed: celery-batches does not apply Celery's own `expires`.
    With `probabilities`, the worker also stores the whole probability row (PROBABILITIES_PREFIX).
    """
    key = PIXELS_PREFIX + task_id
    if max_depth is not None:
        target = queue or celery.conf.task_default_queue
        depth = client.eval(_STORE_UNLESS_FULL, 2, target, key, max_depth, ttl_s, pixels)
        if depth >= 0:
            raise QueueFull(target, depth)
    else:
        client.set(key, pixels, ex=ttl_s)
    options = {"queue": queue} if queue else {}
    kwargs = {"pixels_key": key, "size": list(size), "top": top, "sent_at": time.time()}
    if expires_at is not None:
        kwargs["expires_at"] = expires_at
    if probabilities:
        kwargs["probabilities"] = True
    # Flower shows kwargsrepr and parses it again (ast.literal_eval) on every event it indexes: only what
    # a person reads there, not the pixels' key or timestamps.
    shown = {"top": top, "size": list(size), **({"expires_at": expires_at} if expires_at is not None else {})}
    celery.send_task("classify", kwargs=kwargs, task_id=task_id, argsrepr="()", kwargsrepr=repr(shown), **options)


def fetch_pixels(client: redis.Redis, keys: list[str]) -> list[bytes | None]:
    """The pixels under each key (None where missing), in one round trip."""
    return client.mget(keys) if keys else []


def drop_pixels(client: redis.Redis, keys: list[str]) -> None:
    if keys:
        client.delete(*keys)
