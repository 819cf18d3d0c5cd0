"""A job's state in Redis, shared by the API (create, read, cancel) and the decoder workers (drive).

    imageclf:job:<id>          hash: status, kind, total, done, cursor, spec (JSON), result (JSON), error
    imageclf:job:<id>:pending  hash: classify task id -> JSON of the item it classifies
    imageclf:job:<id>:items    hash: item index -> JSON of its outcome
    imageclf:job:<id>:csv      list: an evaluation's per-image CSV rows, in pages of text (kept with the result)
    imageclf:job:<id>:lock     the driver currently working on the job
    imageclf:bulk:in-flight:<model>  sorted set: classify task ids of all jobs sent and not yet gathered, by send time

An image job's items (one per image, or per image and version for an evaluation) are listed in
UPLOAD_DIR/<id>/items.jsonl beside its files, not in Redis: the job record stays small however
many images it has, and the decoder reads the list from its cursor on.

Status moves PENDING -> PROGRESS -> SUCCESS / FAILURE / REVOKED and never leaves a
final state: every write is a compare-and-set in Lua, so a cancel (API) and a
driver's progress write cannot overwrite each other. No key lives without a TTL.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import redis

import settings
from tasks.payloads import PIXELS_PREFIX, drop_pixels
from tasks.redis_clients import text

JOB_PREFIX = "imageclf:job:"
BULK_IN_FLIGHT_PREFIX = "imageclf:bulk:in-flight:"
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


def bulk_in_flight_key(model: str) -> str:
    return BULK_IN_FLIGHT_PREFIX + model


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def pending_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":pending"


def items_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":items"


def csv_key(job_id: str) -> str:
    return JOB_PREFIX + job_id + ":csv"


def write_items(folder: Path, items: Iterable[dict[str, Any]]) -> None:
    """List the job's items in its folder, one JSON line each, in the order the job runs them."""
    with open(folder / _ITEMS_FILE, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


def read_items(job_id: str, start: int = 0) -> Iterator[dict[str, Any]]:
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
               ttl_s: int) -> None:
    """Queue the job's record on `pipe` (the caller adds its issued id and executes)."""
    now = time.time()
    pipe.hset(job_key(job_id), mapping={
        "status": "PENDING", "kind": kind, "total": total, "done": 0, "cursor": 0,
        "spec": json.dumps(spec), "created": now, "updated": now,
    })
    pipe.expire(job_key(job_id), ttl_s)


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


def acquire_lock(client: redis.Redis, job_id: str, ttl_s: float) -> str | None:
    """A token if this caller may drive the job now (one driver at a time), else None."""
    token = uuid.uuid4().hex
    return token if client.set(JOB_PREFIX + job_id + ":lock", token, nx=True, px=int(ttl_s * 1000)) else None


def release_lock(client: redis.Redis, job_id: str, token: str) -> None:
    client.eval(_RELEASE_LOCK, 1, JOB_PREFIX + job_id + ":lock", token)


def job_dir(job_id: str) -> Path:
    """Where the API stores the job's uploads (UPLOAD_DIR is shared by the API and the decoders)."""
    return Path(settings.UPLOAD_DIR) / job_id


def discard(client: redis.Redis, job_id: str) -> None:
    """Forget a job's work in flight: its queued pixels, item records and files (the status stays).

    Classify requests whose pixels are gone fail at once without running the model.
    """
    sent = [text(tid) for tid in client.hkeys(pending_key(job_id))]
    with client.pipeline(transaction=False) as pipe:  # one round trip when the pixels live on the broker
        pipe.delete(pending_key(job_id), items_key(job_id))
        drop_on_shards = drop_pixels(pipe, [PIXELS_PREFIX + tid for tid in sent])
        pipe.execute()
    drop_on_shards()
    if sent:
        for key in client.scan_iter(match=BULK_IN_FLIGHT_PREFIX + "*"):
            client.zrem(key, *sent)
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
