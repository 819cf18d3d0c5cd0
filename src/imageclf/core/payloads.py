"""How an image travels from the API to a worker: raw pixels under their own Redis key.

The task message carries only the key. kombu's Redis transport wraps every body in
base64 inside JSON and, with acks_late, JSON-encodes it again into its unacked hash,
so 150 KB of pixels in the message cost 204 KB of Redis and several milliseconds of
encoding in the worker's consumer per image (measured). A binary key costs 150 KB and
one MGET per batch; the worker deletes it once the request's result is stored.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import serialization

from imageclf import settings
from imageclf.core.pixel_reads import mget_into
from imageclf.core.redis_clients import pixel_packer

PIXELS_PREFIX = "imageclf:pixels:"
#: A request sent with `probabilities=True` gets its whole class-probability row stored here too, as
#: float32 bytes (4 KB for 1000 classes, where JSON would take 20 KB in the result and its publish).
PROBABILITIES_PREFIX = "imageclf:probabilities:"
#: Every id the API hands out (requests and jobs) is recorded under this prefix with its owner.
ISSUED_PREFIX = "imageclf:issued:"
#: Requests the API queued and no worker answered yet (imageclf.core.request_watch sends again those whose message was
#: lost): a zset of id -> when it was queued, and a hash of id -> "<queue>\n<task message>".
WATCH_KEY = "imageclf:requests:sent"
MESSAGES_KEY = "imageclf:requests:messages"
#: The sender named in each task message's headers, as Celery names an anonymous sender.
_ORIGIN = anon_nodename()


class QueueFull(Exception):
    """The queue already holds `depth` messages, at or past the sender's limit; nothing was stored."""

    def __init__(self, queue: str, depth: int) -> None:
        super().__init__(f"{queue} holds {depth} messages")
        self.queue = queue
        self.depth = depth


# KEYS: the queue, the issued id's key, WATCH_KEY, MESSAGES_KEY; ARGV: the depth limit (-1: none), the TTL, the
# task message, the issued record ("": none), the task id and the time when watched ("": not watched). Atomic: a
# refused request queues nothing (its pixels, SET just before in the same round trip, are deleted then), and a
# replica that holds the issued record holds the queued work too (scripts replicate as one transaction, after
# the SET). The pixels are not an argument: Lua copies an argument twice more (measured: 3.8 ms of Redis' CPU
# for a part's 4.8 MB through the script, 0.8 ms as a SET beside it).
_ENQUEUE = """
local limit = tonumber(ARGV[1])
if limit >= 0 then
  local depth = redis.call('LLEN', KEYS[1])
  if depth >= limit then return depth end
end
redis.call('LPUSH', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2]) end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('HSET', KEYS[4], ARGV[5], KEYS[1] .. '\\n' .. ARGV[3])
end
return -1
"""


def task_message(celery: Celery, task_id: str, kwargs: dict[str, Any], queue: str, kwargsrepr: str) -> str:
    """The `classify` task as kombu's Redis transport stores it in `queue`: what `send_task` would push.

    Celery's own protocol-2 headers and msgpack body, in kombu's JSON envelope (base64 body,
    delivery tag, the default exchange). Built here so the API can push it in the same script
    that stores its pixels: `send_task` through kombu's producer cost the API 0.8 ms a request
    and a round trip of its own (docs/benchmarks/per-image.md).
    """
    headers, properties, body, _ = celery.amqp.as_task_v2(
        task_id, "classify", (), kwargs, reply_to=celery.thread_oid, origin=_ORIGIN, argsrepr="()",
        kwargsrepr=kwargsrepr)
    content_type, encoding, data = serialization.dumps(body, serializer=celery.conf.task_serializer)
    properties.update(delivery_mode=2, delivery_info={"exchange": "", "routing_key": queue}, priority=0,
                      body_encoding="base64", delivery_tag=str(uuid.uuid4()))
    return json.dumps({"body": base64.b64encode(data).decode(), "content-encoding": encoding,
                       "content-type": content_type, "headers": headers, "properties": properties})


def enqueue_classify(celery: Celery, client: redis.Redis, task_id: str, pixels: bytes, size: tuple[int, int],
                     top: int, ttl_s: int, queue: str | None = None,
                     expires_at: float | None = None, max_depth: int | None = None,
                     probabilities: bool = False, issued: str | None = None,
                     wait_replicas: int = 0, wait_ms: int = 1000, version: int | None = None,
                     pinned: bool = False, shadow: int | None = None,
                     trace: dict[str, str] | None = None, watched: bool = False,
                     part: dict[str, Any] | None = None, route: str | None = None, key: str | None = None
                     ) -> int:
    """Store the pixels ((height, width) = `size`, RGB) with a TTL and queue the classify task, in one script.

    With `max_depth`, raises QueueFull instead, storing nothing, when `queue` already holds that many
    messages. A request still waiting at `expires_at` (epoch seconds) is skipped by the worker, not
    computed: celery-batches does not apply Celery's own `expires`. With `probabilities`, the worker
    also stores the whole probability row (PROBABILITIES_PREFIX). `issued` is stored under the id's
    ISSUED_PREFIX key in the same script; with `wait_replicas`, Redis WAITs for that many replicas
    (at most `wait_ms`) in the same round trip. `version` is the model version to compute it (None: the
    default), `pinned` when the client named it, `shadow` a version to compute it again in the bulk lane
    (imageclf.core.shadow), `trace` the request's trace context
    (imageclf.core.tracing). A `watched` request is recorded until
    its answer is stored, so that its message is sent again if lost (imageclf.core.request_watch). A job's `part` holds
    several images, their pixels one after another: `part` adds `items` (the record of each) and, where they
    differ, `versions` and `sizes` (imageclf.workers.jobs.chunks); it is answered by one record. `route` (predict,
    v2, grpc, job) and `key` (the caller's key id) go into the prediction log (imageclf.core.prediction_log).
    Returns the replicas that confirmed (0 without WAIT).
    """
    queue = queue or celery.conf.task_default_queue
    kwargs: dict[str, Any] = {"pixels_key": PIXELS_PREFIX + task_id, "size": list(size), "top": top,
                              "sent_at": time.time()}
    if expires_at is not None:
        kwargs["expires_at"] = expires_at
    if probabilities:
        kwargs["probabilities"] = True
    if version is not None:
        kwargs["version"] = version
    if pinned:
        kwargs["pinned"] = True
    if shadow is not None:
        kwargs["shadow"] = shadow
    if trace:
        kwargs["trace"] = trace
    if part:
        kwargs.update(part)
    if route:
        kwargs["route"] = route
    if key:
        kwargs["key"] = key
    # Flower shows kwargsrepr and parses it again (ast.literal_eval) on every event it indexes: only what
    # a person reads there, not the pixels' key or timestamps.
    shown = {**({"images": len(part["items"])} if part else {}), "top": top, "size": list(size),
             **({"version": version} if version is not None else {}),
             **({"expires_at": expires_at} if expires_at is not None else {})}
    message = task_message(celery, task_id, kwargs, queue, repr(shown))
    key, shards = kwargs["pixels_key"], pixel_shards()
    holder = shards.for_key(key) if shards else client
    if shards:  # before the message exists, so no worker can look for pixels that are not there yet
        holder.set(key, pixels, ex=ttl_s)
    with client.pipeline(transaction=False) as pipe:  # one round trip; on the broker the SET goes first
        if not shards:
            pipe.set(key, pixels, ex=ttl_s)
        pipe.eval(_ENQUEUE, 4, queue, ISSUED_PREFIX + task_id, WATCH_KEY, MESSAGES_KEY,
                  -1 if max_depth is None else max_depth, ttl_s, message, issued or "", task_id if watched else "",
                  time.time())
        if wait_replicas:
            pipe.wait(wait_replicas, wait_ms)
        replies = pipe.execute()
    depth = replies[0 if shards else 1]
    if depth >= 0:
        holder.delete(key)  # refused: nothing of it stays
        raise QueueFull(queue, depth)
    return replies[-1] if wait_replicas else 0


class PixelShards:
    """The Redis servers that hold request pixels instead of the broker (PIXELS_REDIS_URLS), one per key.

    One Redis carries a few thousand images a second, most of its work being the 150 KB of pixels
    each image brings in and out (docs/benchmarks/per-image.md). With shards the broker carries only
    task messages, results and events, and each shard a share of the pixels.
    """

    def __init__(self, urls: list[str]) -> None:
        self._clients = [redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5,
                                              command_packer=pixel_packer()) for url in urls]

    def __bool__(self) -> bool:
        return bool(self._clients)

    def for_key(self, key: str) -> redis.Redis:
        return self._clients[zlib.crc32(key.encode()) % len(self._clients)]

    def by_shard(self, keys: list[str]) -> list[tuple[redis.Redis, list[int]]]:
        """(shard, positions in `keys`) for every shard that holds some of them."""
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(zlib.crc32(key.encode()) % len(self._clients), []).append(i)
        return [(self._clients[shard], positions) for shard, positions in groups.items()]


_shards: PixelShards | None = None


def pixel_shards() -> PixelShards:
    """This process' PixelShards from PIXELS_REDIS_URLS (empty: pixels live on the broker's Redis)."""
    global _shards
    if _shards is None:
        _shards = PixelShards(settings.PIXELS_REDIS_URLS)
    return _shards


def fetch_pixels(client: redis.Redis, keys: list[str]) -> list[bytearray | None]:
    """The pixels under each key (None where missing): one MGET on the broker, or one per shard, each value
    read straight into its own buffer (imageclf.core.pixel_reads)."""
    shards = pixel_shards()
    if not keys or not shards:
        return mget_into(client, keys) if keys else []
    found: list[bytearray | None] = [None] * len(keys)
    for shard, positions in shards.by_shard(keys):
        for i, blob in zip(positions, mget_into(shard, [keys[i] for i in positions])):
            found[i] = blob
    return found


def pixels_present(client: redis.Redis, keys: list[str]) -> list[bool]:
    """Whether each key's pixels are still stored (on the broker, or on their shard)."""
    shards = pixel_shards()
    groups = shards.by_shard(keys) if shards else [(client, list(range(len(keys))))]
    found = [False] * len(keys)
    for holder, positions in groups:
        with holder.pipeline(transaction=False) as pipe:
            for i in positions:
                pipe.exists(keys[i])
            for i, there in zip(positions, pipe.execute()):
                found[i] = bool(there)
    return found


def forget(client: redis.Redis | redis.client.Pipeline, request_ids: list[str]) -> None:
    """Stop watching answered requests (WATCH_KEY): two commands on `client`, whatever their number."""
    if request_ids:
        client.zrem(WATCH_KEY, *request_ids)
        client.hdel(MESSAGES_KEY, *request_ids)


def drop_pixels(client: redis.Redis | redis.client.Pipeline, keys: list[str],
                watched: bool = True) -> Callable[[], None]:
    """Delete answered requests' pixels and, unless none was `watched` (job parts, shadow copies), stop
    watching them. On the broker the DEL goes on `client` (a pipeline: sent with the answers); on shards it is
    left to the returned function, to call once the answers are stored."""
    if watched:
        forget(client, [key.removeprefix(PIXELS_PREFIX) for key in keys])
    shards = pixel_shards()
    if not shards:
        if keys:
            client.delete(*keys)
        return lambda: None

    def on_shards() -> None:
        for shard, positions in shards.by_shard(keys):
            shard.delete(*(keys[i] for i in positions))

    return on_shards
