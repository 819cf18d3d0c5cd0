"""A job's state in Redis, shared by the API (create, read, cancel) and the decoder workers (drive).

    imageclf:job:<id>          hash: status, kind, total, done, cursor, spec (JSON), result (JSON), error, driver,
                               and for a video that ends early: video_end, decode_error (record_video_end)
    imageclf:job:<id>:pending  hash: chunk id -> JSON of the chunk in flight: first, count, parts, left, sent
    imageclf:job:<id>:items    hash: item index -> JSON of its outcome
    imageclf:job:<id>:chunks   hash: chunk id -> its deliveries; after a death, `<chunk>:reading` (the item being
                               read) and `<chunk>:deaths:<item>` (poison_check)
    imageclf:job:<id>:csv      list: an evaluation's per-image CSV rows, in pages of text (kept with the result)
    imageclf:job:<id>:lock     the step currently working on the job: "<host>/<pid>/<random>"
    imageclf:jobs:active       sorted set: the ids of jobs not yet ended, by creation time (the stall sweep's list)
    imageclf:jobs:resumed      hash: jobs taken up again, by reason (`stalled`, `driver_died`), for /metrics
    imageclf:bulk:in-flight:<model>  sorted set: "<job id>/<chunk id>" of all jobs' chunks in flight, by send time

An image job's items (one per image, or per image and version for an evaluation) are listed in
UPLOAD_DIR/<id>/items.jsonl beside its files, not in Redis: the job record stays small however
many images it has, and the decoder reads the list from its cursor on.

A job is driven by one chain of `job_step` tasks; the job's `driver` field holds the task id of the step that
may run next. A step with another id is a stale copy (a redelivery, a sweep's resend already overtaken) and
does nothing, so copies never multiply into parallel chains.

Status moves PENDING -> PROGRESS -> SUCCESS / FAILURE / REVOKED and never leaves a
final state: every write is a compare-and-set in Lua, so a cancel (API) and a
driver's progress write cannot overwrite each other. No key lives without a TTL.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import redis

from imageclf import settings
from imageclf.core.payloads import PIXELS_PREFIX, drop_pixels
from imageclf.core.redis_clients import text

JOB_PREFIX = "imageclf:job:"
ACTIVE_KEY = "imageclf:jobs:active"
RESUMED_KEY = "imageclf:jobs:resumed"
BULK_IN_FLIGHT_PREFIX = "imageclf:bulk:in-flight:"
#: An item whose `source` starts with this is an object in an S3-compatible store, read with s3fs.
S3_SCHEME = "s3://"


@functools.cache
def source_roots() -> tuple[Path, ...]:
    """JOB_SOURCE_ROOTS, resolved once: the folders a job's `source` may name and its decoders may read."""
    return tuple(Path(root).resolve() for root in settings.JOB_SOURCE_ROOTS)


def inside(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or lies under it (both resolved)."""
    return path == root or path.is_relative_to(root)
ACTIVE = ("PENDING", "PROGRESS")
_ITEMS_FILE = "items.jsonl"
FINAL = ("SUCCESS", "FAILURE", "REVOKED")

# HSET the fields (and refresh the TTL) only while the job is active; returns "OK" or the current status.
_UPDATE_IF_ACTIVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'PENDING' and status ~= 'PROGRESS' then return status or false end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'OK'
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Whether step ARGV[1] is the job's driver (a job recorded before drivers were has none: any step is).
_IS_DRIVER = """
local status, driver = unpack(redis.call('HMGET', KEYS[1], 'status', 'driver'))
if status ~= 'PENDING' and status ~= 'PROGRESS' then return 0 end
if driver and driver ~= ARGV[1] then return 0 end
return 1
"""
# Hand the job from step ARGV[1] to step ARGV[2]; 0 when ARGV[1] no longer drives it (or it ended).
_HAND_OVER = """
local status, driver = unpack(redis.call('HMGET', KEYS[1], 'status', 'driver'))
if status ~= 'PENDING' and status ~= 'PROGRESS' then return 0 end
if driver and driver ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'driver', ARGV[2])
return 1
"""
# A delivery of chunk ARGV[1] starts: count it (returned), and when the delivery before died while reading an item
# (`<chunk>:reading` is still there), count a death against that item. ARGV[2]: the TTL.
_CHUNK_ATTEMPT = """
local reading = redis.call('HGET', KEYS[1], ARGV[1] .. ':reading')
if reading then
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':deaths:' .. reading, 1)
  redis.call('HDEL', KEYS[1], ARGV[1] .. ':reading')
end
local attempt = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return attempt
"""
# Chunk ARGV[1] is about to read item ARGV[2]: its deaths when they reach ARGV[3], else 0, naming it as read now.
_POISON_CHECK = """
local deaths = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':deaths:' .. ARGV[2]) or '0')
if deaths >= tonumber(ARGV[3]) then return deaths end
redis.call('HSET', KEYS[1], ARGV[1] .. ':reading', ARGV[2])
return 0
"""
# A video's frames ran out at ARGV[1] (the earliest such place wins), with the decoder's error ARGV[2] ("": none).
_VIDEO_END = """
local now = redis.call('HGET', KEYS[1], 'video_end')
if now and tonumber(now) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'video_end', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'decode_error', ARGV[2]) end
return 1
"""
# A stalled job: active, not updated since ARGV[1] and no step holding its lock (KEYS[2]). Its `updated` is set
# to ARGV[2] (so it is resent at most once per stall period) and its driver returned (a new one, ARGV[3], when it
# had none). An ended or expired job is dropped from the active list (KEYS[3]).
_TAKE_STALLED = """
local status, updated, driver = unpack(redis.call('HMGET', KEYS[1], 'status', 'updated', 'driver'))
if status ~= 'PENDING' and status ~= 'PROGRESS' then
  redis.call('ZREM', KEYS[3], ARGV[4])
  return false
end
if tonumber(updated or '0') >= tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[2]) == 1 then return false end
driver = driver or ARGV[3]
redis.call('HSET', KEYS[1], 'updated', ARGV[2], 'driver', driver)
return driver
"""


def bulk_in_flight_key(model: str) -> str:
    return BULK_IN_FLIGHT_PREFIX + model


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def pending_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":pending"


def items_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":items"


def chunks_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":chunks"


def csv_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":csv"


def write_items(folder: Path, items: Iterable[dict[str, Any]]) -> None:
    """List the job's items in its folder, one JSON line each, in the order the job runs them."""
    with open(folder / _ITEMS_FILE, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


def read_items(job_id: str, start: int = 0) -> Generator[dict[str, Any], None, None]:
    """The job's items from index `start` on, read lazily from its folder."""
    with open(job_dir(job_id) / _ITEMS_FILE, encoding="utf-8") as f:
        for line in itertools.islice(f, start, None):
            yield json.loads(line)


def append_csv(pipe: redis.client.Pipeline, job_id: str, text: str, ttl_s: int) -> None:
    """Queue one page of a finished evaluation's CSV rows on `pipe`."""
    pipe.rpush(csv_key(job_id), text)
    pipe.expire(csv_key(job_id), ttl_s)


def read_csv(client: redis.Redis, job_id: str) -> Iterator[bytes]:
    """An evaluation's CSV rows, one stored page at a time (never all of them in memory)."""
    for index in itertools.count():
        page = client.lindex(csv_key(job_id), index)
        if page is None:
            return
        yield cast(bytes, page)  # the clients never decode replies (redis-py types them bytes | str)


def create_job(pipe: redis.client.Pipeline, job_id: str, kind: str, total: int, spec: dict[str, Any],
               ttl_s: int, driver: str) -> None:
    """Queue the job's record on `pipe` (the caller adds its issued id, executes, then sends the first step with
    task id `driver`)."""
    now = time.time()
    pipe.hset(job_key(job_id), mapping={
        "status": "PENDING", "kind": kind, "total": total, "done": 0, "cursor": 0,
        "spec": json.dumps(spec), "created": now, "updated": now, "driver": driver,
    })
    pipe.expire(job_key(job_id), ttl_s)
    pipe.zadd(ACTIVE_KEY, {job_id: now})


def read_job(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The job's state for clients (None when unknown or expired); `spec` and `result` parsed."""
    raw = client.hgetall(job_key(job_id))
    if not raw:
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    job: dict[str, Any] = {
        "status": fields["status"], "kind": fields["kind"],
        "done": int(fields.get("done", 0)), "total": int(fields.get("total", 0)),
        "cursor": int(fields.get("cursor", 0)), "spec": json.loads(fields["spec"]),
    }
    if "result" in fields:
        job["result"] = json.loads(fields["result"])
    for optional in ("error", "decode_error"):
        if optional in fields:
            job[optional] = fields[optional]
    if "video_end" in fields:  # the video's frames ran out there (record_video_end)
        job["video_end"] = int(fields["video_end"])
    return job


def update_if_active(client: redis.Redis, job_id: str, ttl_s: int, **fields: Any) -> str | None:
    """Write `fields` unless the job already ended: "OK", or the status that stopped it (None: gone)."""
    args: list[Any] = [ttl_s]
    for name, value in {**fields, "updated": time.time()}.items():
        args += [name, value]
    answer = client.eval(_UPDATE_IF_ACTIVE, 1, job_key(job_id), *args)
    return answer.decode() if isinstance(answer, bytes) else answer or None


def cancel(client: redis.Redis, job_id: str, ttl_s: int) -> str | None:
    """Mark an active job REVOKED: "OK", or the final status it already had (None: gone)."""
    return update_if_active(client, job_id, ttl_s, status="REVOKED", error="cancelled by the client")


def is_driver(client: redis.Redis, job_id: str, step_id: str) -> bool:
    """Whether the step `step_id` may drive the job (it is active and the step is its current driver)."""
    return bool(client.eval(_IS_DRIVER, 1, job_key(job_id), step_id))


def hand_over(client: redis.Redis, job_id: str, step_id: str, next_id: str) -> bool:
    """Make `next_id` the job's driver, if `step_id` still is; the caller then sends the step `next_id`."""
    return bool(client.eval(_HAND_OVER, 1, job_key(job_id), step_id, next_id))


def chunk_attempt(client: redis.Redis, job_id: str, chunk_id: str) -> int:
    """Count a delivery of the chunk: 1 the first time, more when a decoder died with it (or lost it). A
    delivery after one that died while reading an item (poison_check named it) counts a death against it."""
    return int(client.eval(_CHUNK_ATTEMPT, 1, chunks_key(job_id), chunk_id, settings.RESULT_TTL_S))


def poison_check(client: redis.Redis, job_id: str, chunk_id: str, index: int) -> int:
    """In a chunk delivered again after a death, before item `index` is read: the deaths counted against it when
    they reach MAX_DELIVERIES (it then fails alone), else 0, and the item is named as the one being read."""
    return int(client.eval(_POISON_CHECK, 1, chunks_key(job_id), chunk_id, index, settings.MAX_DELIVERIES))


def record_video_end(client: redis.Redis, job_id: str, end: int, error: str | None) -> None:
    """A video's frames ran out at sampled frame `end` (a corrupt or shorter video): the job ends there."""
    client.eval(_VIDEO_END, 1, job_key(job_id), end, error or "")


def take_stalled(client: redis.Redis, job_id: str, stall_s: float) -> str | None:
    """The driver's step id to send again if the job has not moved for `stall_s` and no step holds it, else None."""
    now = time.time()
    answer = client.eval(_TAKE_STALLED, 3, job_key(job_id), _lock_key(job_id), ACTIVE_KEY,
                         now - stall_s, now, str(uuid.uuid4()), job_id)
    return text(answer) if answer else None


def active_jobs(client: redis.Redis) -> list[str]:
    """Ids of the jobs not known to have ended (the oldest first)."""
    return [text(cast(bytes, job_id)) for job_id in client.zrange(ACTIVE_KEY, 0, -1)]


def part_id(chunk_id: str, k: int) -> str:
    """The classify task id of a chunk's part `k` (imageclf.workers.jobs.chunks)."""
    return f"{chunk_id}.{k}"


def window_member(job_id: str, chunk_id: str) -> str:
    """A chunk's member in its model's bulk window."""
    return f"{job_id}/{chunk_id}"


def prune_in_flight(client: redis.Redis, key: str, older_than_s: float, at_most: int = 200) -> int:
    """Drop from a model's bulk window (`key`) the chunks no job waits for: sent over `older_than_s` ago and no
    longer pending in their job. A Redis that died in the middle of a gathering leaves such members behind
    (what it had not written to disk is lost, and a pipeline is not atomic), and each would hold a place in the
    window for good. Returns how many were dropped."""
    old = [text(t) for t in cast(list[bytes], client.zrangebyscore(key, "-inf", time.time() - older_than_s,
                                                                    0, at_most))]
    if not old:
        return 0
    with client.pipeline(transaction=False) as pipe:
        for member in old:
            job_id, _, chunk_id = member.partition("/")
            pipe.hexists(pending_key(job_id), chunk_id)
        waited = pipe.execute()
    gone = [member for member, pending in zip(old, waited) if not pending]
    if gone:
        client.zrem(key, *gone)
    return len(gone)


def count_resumed(client: redis.Redis, reason: str) -> None:
    client.hincrby(RESUMED_KEY, reason, 1)


def read_resumed(client: redis.Redis) -> dict[str, int]:
    """Jobs taken up again since Redis started, by reason (`stalled`, `driver_died`, `items_lost`)."""
    return {text(k): int(v) for k, v in client.hgetall(RESUMED_KEY).items()}


def _lock_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":lock"


def acquire_lock(client: redis.Redis, job_id: str, ttl_s: float) -> tuple[str | None, bool]:
    """(a token if this caller may work on the job now, else None; whether a dead step's lock was freed for it).

    One step at a time. The lock names its holder's host and process: a step that finds it held by a process of
    this host that no longer exists (killed mid-step) takes it at once instead of waiting for it to expire.
    """
    host = socket.gethostname()
    token = f"{host}/{os.getpid()}/{uuid.uuid4().hex}"
    key = _lock_key(job_id)
    if client.set(key, token, nx=True, px=int(ttl_s * 1000)):
        return token, False
    holder = client.get(key)
    if holder is None or not _dead_here(text(holder), host):
        return None, False
    client.eval(_RELEASE_LOCK, 1, key, holder)
    return (token, True) if client.set(key, token, nx=True, px=int(ttl_s * 1000)) else (None, False)


def _dead_here(holder: str, host: str) -> bool:
    """Whether a lock's holder ("host/pid/random") is a process of this host that has exited."""
    parts = holder.split("/")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    try:  # killed but not yet reaped by its parent
        with open(f"/proc/{parts[1]}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def release_lock(client: redis.Redis, job_id: str, token: str) -> None:
    client.eval(_RELEASE_LOCK, 1, _lock_key(job_id), token)


def job_dir(job_id: str) -> Path:
    """Where the API stores the job's uploads (UPLOAD_DIR is shared by the API and the decoders)."""
    return Path(settings.UPLOAD_DIR) / job_id


def discard(client: redis.Redis, job_id: str) -> None:
    """Forget a job's work in flight: its queued pixels, item records and files (the status stays).

    Classify requests whose pixels are gone fail at once without running the model.
    """
    sent = {text(cid): json.loads(raw) for cid, raw in client.hgetall(pending_key(job_id)).items()}
    parts = [PIXELS_PREFIX + part_id(cid, k) for cid, chunk in sent.items() for k in range(chunk["parts"])]
    with client.pipeline(transaction=False) as pipe:  # one round trip when the pixels live on the broker
        pipe.delete(pending_key(job_id), items_key(job_id), chunks_key(job_id))
        pipe.zrem(ACTIVE_KEY, job_id)
        drop_on_shards = drop_pixels(pipe, parts, watched=False)
        pipe.execute()
    drop_on_shards()
    if sent:
        for key in client.scan_iter(match=BULK_IN_FLIGHT_PREFIX + "*"):
            client.zrem(key, *(window_member(job_id, cid) for cid in sent))
    shutil.rmtree(job_dir(job_id), ignore_errors=True)


def sweep_orphans(client: redis.Redis, older_than_s: float) -> list[str]:
    """Delete upload folders of jobs Redis no longer knows (expired while no decoder ran); returns their ids.

    Only folders untouched for `older_than_s`: the API writes a job's files before recording it.
    """
    root = Path(settings.UPLOAD_DIR)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.stat().st_mtime < cutoff and not client.exists(job_key(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
