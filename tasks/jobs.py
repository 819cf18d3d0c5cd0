"""The job driver, run by the decoder workers (-Q jobs): decode, feed the model, gather, finish.

A job (images, zip entries, or a video's sampled frames) is driven by a chain of
short `job_step` tasks, each working for at most STEP_S seconds and then queueing
the next: a long video never becomes one long task that the broker would
redeliver after its visibility timeout. Whatever dies, the chain goes on:
- a step whose pool process is killed is requeued (`reject_on_worker_lost`) and, finding
  its dead predecessor's lock on this host, resumes at once from the cursor stored in
  Redis; items sent since that cursor was stored are sent again, and their outcomes are
  kept per item index, so none is counted twice;
- a step held by a worker whose main process died comes back from the broker (the
  visibility timeout, tasks/broker.py);
- anything else that breaks the chain (a message lost with a failed-over Redis, a process
  that died between handing the job over and queueing the step) is found by the stall
  sweep that the decoders run: an active job with no progress for JOB_STALL_S and no step
  holding it gets its step sent again.
Only the step whose task id the job names as its driver works on it (job_store), so
redelivered and resent copies never become parallel chains.

Each step: gathers the answers of the job's classify tasks, decodes more items while
fewer than JOB_IN_FLIGHT of this job and BULK_IN_FLIGHT per model worker of all jobs
are queued (so a 4-hour video never sits in Redis as pixels, and the model workers
always keep prefetch room for /predict requests), sends them through the same batched
`classify` task as /predict on the bulk queue, stores progress, and finishes the
job when every item has an outcome. A job cancelled by the API stops at its next
round (within _POLL_S), and the job's queued pixels and files are deleted.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import socket
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import redis
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis
from PIL import Image

import settings
from models.decode_budget import DecodeBudget
from models.images import ImageDecodeError, decode_to_pixels
from models.video import VideoDecodeError, VideoInfo, decode_frames, sample_times
from tasks import celery_app
from tasks.job_results import evaluation_result, images_result, video_result
from tasks.job_store import (
    FINAL,
    S3_SCHEME,
    acquire_lock,
    active_jobs,
    append_csv,
    bulk_in_flight_key,
    count_resumed,
    discard,
    hand_over,
    inside,
    is_driver,
    items_key,
    job_dir,
    mark_reading,
    pending_key,
    prune_in_flight,
    read_items,
    read_job,
    record_death,
    release_lock,
    source_roots,
    take_stalled,
    update_if_active,
)
from tasks.model_records import InputLookup, ModelInput, ModelUnavailable
from tasks.payloads import ISSUED_PREFIX, PIXELS_PREFIX, enqueue_classify, fetch_pixels
from tasks.readiness import live_workers
from tasks.redis_clients import text
from tasks.request_watch import resend_lost
from tasks.result_store import READY_STATES, RESULT_KEY_PREFIX, failure_message
from tasks.webhooks import schedule
from tasks.worker import pixel_store

logger = get_logger(__name__)

STEP_S = 2.0          # work per step before handing over to the next one
THUMBNAILS = 48       # an evaluation's mistakes shown as thumbnails (the first ones)
THUMBNAIL_PX = 96
_POLL_S = 0.1         # pause between rounds when nothing could be sent
_LOST_CHECK_S = 10.0  # an item unanswered this long is checked for having been lost (see _resend_lost)
_GONE_CHECK_S = 30.0  # ... and, its pixels still there, for its message being nowhere (see _messages_gone)
_LOCK_S = 60.0        # a step's lock frees itself after this when its host is gone (on its own host: at once)
_SWEEP_LOCK = "imageclf:jobs:sweeping"  # held by the decoder process sweeping for stalled jobs this period


#: Redis or the broker away (a restart, a Sentinel failover): the step is sent again and resumes from the
#: job's stored cursor. A step that failed instead would be acknowledged, and its job would never go on.
_REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, OperationalError)
#: Sending the next step (or a retry) waits up to a minute for the broker; kombu's default gives up in 0.6 s.
_SEND_POLICY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


@celery_app.task(name="job_step", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
                 autoretry_for=_REDIS_AWAY, max_retries=None, retry_backoff=1, retry_backoff_max=10,
                 retry_jitter=False, retry_kwargs={"retry_policy": _SEND_POLICY})
def job_step(self: Any, job_id: str) -> None:
    """Work on the job for about STEP_S, then hand it to the next step (a new task id) and queue that."""
    client = pixel_store()
    step_id = self.request.id
    if not is_driver(client, job_id, step_id):  # the job ended, or a later step drives it: a stale copy
        return
    token, freed = acquire_lock(client, job_id, _LOCK_S)
    if token is None:  # a copy of this step runs, or a step of a lost host holds the lock until it expires
        job_step.apply_async((job_id,), task_id=step_id, countdown=1.0, retry_policy=_SEND_POLICY)
        return
    driver = _Driver(client, job_id)
    if freed:
        cursor, deaths = record_death(client, job_id)
        logger.warning("job %s: the process running its last step died%s; resuming from item %d", job_id,
                       f" ({deaths} time(s) while reading item {cursor})" if deaths else "", cursor)
        count_resumed(client, "driver_died")
        if deaths >= settings.MAX_DELIVERIES:
            driver.skip(cursor, f"a decoder process died {deaths} times while reading this item (MAX_DELIVERIES)")
    try:
        more = driver.run(STEP_S)
    finally:
        with contextlib.suppress(*_REDIS_AWAY):  # else the lock frees itself after _LOCK_S
            release_lock(client, job_id, token)
    next_id = str(uuid.uuid4())
    if more and hand_over(client, job_id, step_id, next_id):
        job_step.apply_async((job_id,), task_id=next_id, retry_policy=_SEND_POLICY)


def resume_stalled(client: redis.Redis, stall_s: float) -> list[str]:
    """Send again the step of every active job that has not moved for `stall_s` while no step held it: its chain
    ended without it (a step's message lost with a broker, a process that died between handing the job over and
    sending the step). Returns their ids."""
    resumed = []
    for job_id in active_jobs(client):
        step_id = take_stalled(client, job_id, stall_s)
        if step_id is None:
            continue
        logger.warning("job %s: no progress for %.0f s (JOB_STALL_S) and no step running; taking it up again",
                       job_id, stall_s)
        count_resumed(client, "stalled")
        job_step.apply_async((job_id,), task_id=step_id, retry_policy=_SEND_POLICY)
        resumed.append(job_id)
    return resumed


def start_stall_sweep(client: redis.Redis) -> None:
    """In a worker process: look for stalled jobs every JOB_STALL_S / 4 (at most 5 s), and for requests whose
    message was lost (tasks.request_watch), one process of all the workers at a time (a lock in Redis), until
    the process ends."""
    period_s = min(5.0, settings.JOB_STALL_S / 4)

    def loop() -> None:
        while True:
            time.sleep(period_s)
            try:
                if client.set(_SWEEP_LOCK, socket.gethostname(), nx=True, px=int(period_s * 900)):
                    resume_stalled(client, settings.JOB_STALL_S)
                    resend_lost(client, _GONE_CHECK_S)
            except (*_REDIS_AWAY, OSError) as exc:  # Redis away: the next round looks again
                logger.warning("stall sweep: %s", exc)

    threading.Thread(target=loop, name="stall-sweep", daemon=True).start()


_input_lookup: InputLookup | None = None
#: This decoder process's memory for decoded images (steps wait for room; they have no client waiting).
_DECODE_BUDGET = DecodeBudget(int(settings.DECODE_BUDGET_MB * 2**20))


def _inputs(client: redis.Redis) -> InputLookup:
    """This decoder process's cached view of each model's current input."""
    global _input_lookup
    if _input_lookup is None:
        _input_lookup = InputLookup(client)
    return _input_lookup


#: What the driver sends for one item: its index, the record kept with its outcome, its pixels (or why it
#: cannot be classified) and its entry in the job's list ({} for a video frame).
_Item = tuple[int, dict[str, Any], bytes | str, dict[str, Any]]


class _ItemError(Exception):
    """One item (a file, a zip entry) cannot be classified; the rest of the job goes on."""


class _Driver:
    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.ttl = settings.RESULT_TTL_S
        self.input: ModelInput | None = None  # the model's input this step sizes items for
        self.inputs: dict[int, ModelInput] = {}  # each ready version's (an evaluation item names its version)
        self.compact = False  # an evaluation keeps only class ids and probabilities of its items' answers
        self._ages: dict[str, float] = {}  # seconds each unanswered item has waited, as _collect last saw
        self._searched = False  # whether this step looked for items whose message is gone (_messages_gone)

    def run(self, budget_s: float) -> bool:
        """Work on the job for about `budget_s` seconds; True if another step is needed."""
        job = read_job(self.client, self.job_id)
        if job is None or job["status"] in FINAL:
            discard(self.client, self.job_id)
            return False
        if not job_dir(self.job_id).is_dir():  # the API wrote the files where this decoder cannot see them
            error = (f"this decoder ({socket.gethostname()}) cannot read the job's files: {job_dir(self.job_id)} "
                     f"does not exist here. UPLOAD_DIR must be one volume shared by the API and every decoder")
            logger.error("job %s: %s", self.job_id, error)
            if update_if_active(self.client, self.job_id, self.ttl, status="FAILURE", error=error) == "OK":
                self._announce_end(job["spec"])
            discard(self.client, self.job_id)
            return False
        spec, total, cursor = job["spec"], job["total"], job["cursor"]
        extra: dict[str, Any] = {"decode_error": job["decode_error"]} if "decode_error" in job else {}
        self.compact = "evaluate" in spec
        items = self._items(spec, cursor, total)
        deadline = time.monotonic() + budget_s
        self.client.expire(ISSUED_PREFIX + self.job_id, self.ttl)
        model_workers = sum(w.get("model") == spec["model"] and w.get("role") == "model"
                            for w in live_workers(self.client))
        bulk_limit = settings.BULK_IN_FLIGHT * max(1, model_workers)
        self.in_flight_key = bulk_in_flight_key(spec["model"])
        prune_in_flight(self.client, self.in_flight_key, _LOST_CHECK_S)
        try:
            while True:
                done, in_flight, unanswered = self._collect()
                self._resend_lost(spec, total, unanswered)
                sent = 0
                room = min(settings.JOB_IN_FLIGHT - in_flight, bulk_limit - self.client.zcard(self.in_flight_key))
                careful = cursor < job.get("died_at", -1) + settings.JOB_IN_FLIGHT
                if careful:
                    room = min(room, 1)  # where a step died: one item a round, its cursor stored (see skip)
                try:
                    while sent < room and cursor < total and time.monotonic() < deadline:
                        if careful:
                            mark_reading(self.client, self.job_id, cursor)
                        item = next(items, None)
                        if item is None:  # the video ended before its header said
                            total = cursor
                            break
                        self._send(spec, *item)
                        cursor, sent = item[0] + 1, sent + 1
                except VideoDecodeError as exc:
                    logger.warning("job %s: %s after %d frames", self.job_id, exc, cursor)
                    total, extra["decode_error"] = cursor, str(exc)
                state = update_if_active(self.client, self.job_id, self.ttl, status="PROGRESS",
                                         done=done, total=total, cursor=cursor, **extra)
                if state != "OK":  # cancelled (or expired) meanwhile
                    discard(self.client, self.job_id)
                    return False
                if cursor >= total and in_flight == 0 and done >= total:
                    self._finish(spec, total, extra.get("decode_error"))
                    return False
                if cursor >= total and in_flight == 0 and sent == 0:
                    self._resend_missing(spec, total)
                if time.monotonic() >= deadline:
                    return True
                if sent == 0:
                    time.sleep(_POLL_S)
        finally:
            items.close()

    def skip(self, index: int, reason: str) -> None:
        """Fail item `index` with `reason` and move the cursor past it: an item that kills the process reading it
        (a decoder's crash, an out-of-memory kill) must not hold its job forever. After a death, steps read one
        item a round and say which (job_store.record_death), so a death is put on an item only when it was being
        read, never on one whose step merely waited."""
        job = read_job(self.client, self.job_id)
        if job is None or job["cursor"] != index or index >= job["total"]:
            return
        logger.error("job %s: item %d failed: %s", self.job_id, index, reason)
        record: dict[str, Any] = {"i": index, "status": "FAILURE", "error": reason}
        spec = job["spec"]
        if job["kind"] == "video":  # a frame's record says which frame it is
            info = VideoInfo(**spec["video"])
            t = sample_times(info, spec.get("fps"), spec.get("every_n_frames"), spec["max_frames"])[index]
            record.update(t=t, frame=round(t * info.frame_rate))
        self.client.hset(items_key(self.job_id), str(index), json.dumps(record))
        update_if_active(self.client, self.job_id, self.ttl, cursor=index + 1)

    def _items(self, spec: dict[str, Any], start: int, total: int) -> Generator[_Item, None, None]:
        """(index, record, pixels or an error message, the listed item) for each item from `start` on.

        Items are sized for the job's version (chosen at submit: named, or by the traffic shares);
        when the model cannot be served at all (its workers failed to load it), or the version the
        job named is no longer served, every item fails with that reason.
        """
        try:
            routes = _inputs(self.client).routes_of(spec["model"])
            version = spec.get("version")
            self.input = routes.inputs.get(version) if version is not None else routes.default
            if self.input is None and spec.get("pinned") and "evaluate" not in spec:
                raise ModelUnavailable(f"model {spec['model']!r} version {version} is not served now; served "
                                       f"versions: {', '.join(map(str, routes.versions()))}")
            self.input = self.input or routes.default
            if self.input is None:
                raise ModelUnavailable(f"model {spec['model']!r} serves no version now")
            self.inputs = routes.inputs
        except ModelUnavailable as exc:
            return ((i, {"i": i}, str(exc), {}) for i in range(start, total))
        if spec["kind"] == "video":
            return self._frames(spec, start)
        return self._images(start)

    def _job_input(self) -> ModelInput:
        """The job's input, which _items sets before any item is read."""
        if self.input is None:
            raise RuntimeError("the job's input was read before its items were listed")
        return self.input

    def _input_for(self, item: dict[str, Any]) -> ModelInput:
        """What an item is sized for: its own version's input (an evaluation item), else the job's."""
        if "version" not in item:
            return self._job_input()
        found = self.inputs.get(item["version"])
        if found is None:
            raise _ItemError(f"version {item['version']} is not served now; served versions: "
                             f"{', '.join(map(str, sorted(self.inputs)))}")
        return found

    def _images(self, start: int) -> Generator[_Item, None, None]:
        archives: dict[str, zipfile.ZipFile] = {}
        try:
            for index, item in enumerate(read_items(self.job_id, start), start):
                try:
                    size = self._input_for(item)
                    data = self._read(item, archives)
                    yield index, {"i": index}, decode_to_pixels(data, (size.height, size.width),
                                                                settings.MAX_IMAGE_PIXELS, size.resize,
                                                                _DECODE_BUDGET), item
                except (_ItemError, ImageDecodeError) as exc:
                    yield index, {"i": index}, str(exc), item
        finally:
            for archive in archives.values():
                archive.close()

    def _read(self, item: dict[str, Any], archives: dict[str, zipfile.ZipFile]) -> bytes:
        """The item's bytes, from its file or its zip entry, refusing more than MAX_UPLOAD_MB."""
        limit = int(settings.MAX_UPLOAD_MB * 2**20)
        if item.get("source", "").startswith(S3_SCHEME):
            return _object(item["source"], limit)
        path = _source_path(item["source"]) if "source" in item else job_dir(self.job_id) / item["file"]
        try:
            if "member" not in item:
                with open(path, "rb") as f:
                    data = f.read(limit + 1)
            else:
                if item["file"] not in archives:
                    archives[item["file"]] = zipfile.ZipFile(path)
                with archives[item["file"]].open(archives[item["file"]].infolist()[item["member"]]) as f:
                    data = f.read(limit + 1)  # never more, whatever the entry's header claims
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError,
                ValueError, IndexError) as exc:
            raise _ItemError(f"cannot read this file ({type(exc).__name__}: {exc})") from None
        if len(data) > limit:
            raise _ItemError(f"larger than {settings.MAX_UPLOAD_MB:g} MB (MAX_UPLOAD_MB)")
        return data

    def _frames(self, spec: dict[str, Any], start: int) -> Generator[_Item, None, None]:
        info = VideoInfo(**spec["video"])
        times = sample_times(info, spec.get("fps"), spec.get("every_n_frames"), spec["max_frames"])
        path = str(job_dir(self.job_id) / spec["file"])
        sized = self._job_input()
        for offset, frame in enumerate(decode_frames(path, times[start:], info.frame_rate, (sized.height, sized.width),
                                                     sized.resize)):
            yield start + offset, {"i": start + offset, "t": frame.t, "frame": frame.index}, frame.pixels, {}

    def _send(self, spec: dict[str, Any], index: int, record: dict[str, Any], pixels: bytes | str,
              item: dict[str, Any]) -> None:
        """Queue the item on the bulk queue, or record its failure at once."""
        if isinstance(pixels, str):
            self.client.hset(items_key(self.job_id), str(index),
                             json.dumps({**record, "status": "FAILURE", "error": pixels}))
            return
        task_id = str(uuid.uuid4())
        size = self._input_for(item)
        enqueue_classify(celery_app, self.client, task_id, pixels, (size.height, size.width),
                         spec["top"], self.ttl, queue=settings.bulk_queue(spec["model"]),
                         version=item.get("version", spec.get("version")),
                         pinned="version" in item or bool(spec.get("pinned")))
        # Recorded after sending: a crash in between re-sends the item from the stored cursor.
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(pending_key(self.job_id), task_id, json.dumps({**record, "sent": now}))
            pipe.zadd(self.in_flight_key, {task_id: now})
            pipe.execute()

    def _collect(self) -> tuple[int, int, dict[str, int]]:
        """Move answered items from pending to items; returns (items with an outcome, items in flight, the items
        unanswered for _LOST_CHECK_S or more: task id -> item index)."""
        pending = {text(tid): json.loads(raw) for tid, raw in self.client.hgetall(pending_key(self.job_id)).items()}
        metas = self.client.mget([RESULT_KEY_PREFIX + tid for tid in pending]) if pending else []
        now = time.time()
        unanswered: dict[str, int] = {}
        with self.client.pipeline(transaction=False) as pipe:  # the moves and both counts in one round trip
            for (tid, record), raw in zip(pending.items(), metas):
                age_s = now - record.pop("sent", now)
                outcome = _outcome(json.loads(raw) if raw else None, age_s, self.ttl, self.compact)
                if outcome is None:
                    if age_s >= _LOST_CHECK_S:
                        unanswered[tid] = record["i"]
                        self._ages[tid] = age_s
                    continue
                # In this order, whatever a Redis killed mid-way keeps (a prefix) is consistent: the item is still
                # pending with its answer (gathered again), or gathered; never pending without a place in the
                # window's count, nor counted in the window for good.
                pipe.zrem(self.in_flight_key, tid)
                pipe.hset(items_key(self.job_id), str(record["i"]), json.dumps({**record, **outcome}))
                pipe.hdel(pending_key(self.job_id), tid)
                pipe.delete(RESULT_KEY_PREFIX + tid)
            for key in (pending_key(self.job_id), items_key(self.job_id)):
                pipe.expire(key, self.ttl)
            pipe.hlen(items_key(self.job_id))
            pipe.hlen(pending_key(self.job_id))
            *_, done, in_flight = pipe.execute()
        return done, in_flight, unanswered

    def _resend_lost(self, spec: dict[str, Any], total: int, unanswered: dict[str, int]) -> None:
        """Send again the items whose message is gone without an answer: message and pixels both gone (queued on a
        Redis master that died before its replica had them: replication is asynchronous), or the message alone
        (_messages_gone). A model worker stores an answer in the transaction that deletes the pixels, so pixels
        found gone and then no answer means the item was lost, not answered meanwhile. Each is read again from
        the job's files."""
        if not unanswered:
            return
        keys = [PIXELS_PREFIX + tid for tid in unanswered]
        present = [bool(blob) for blob in fetch_pixels(self.client, keys)]  # first the pixels, then the answers
        gone = [tid for tid, there in zip(unanswered, present) if not there]
        gone += self._messages_gone([tid for tid, there in zip(unanswered, present) if there], spec["model"])
        if not gone:
            return
        answers = self.client.mget([RESULT_KEY_PREFIX + tid for tid in gone])
        lost = [tid for tid, answer in zip(gone, answers) if answer is None]
        for tid in lost:
            index = unanswered[tid]
            logger.warning("job %s: item %d was lost by the broker (a failover?); sending it again", self.job_id, index)
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hdel(pending_key(self.job_id), tid)
                pipe.zrem(self.in_flight_key, tid)
                pipe.execute()
            self._send_again(spec, index, total)

    def _resend_missing(self, spec: dict[str, Any], total: int) -> None:
        """Send again the items the cursor is past that are neither answered nor pending. A Redis killed while this
        step ran loses what it had not written to disk (the append-only file is synced every second), and the
        step's client reconnects to the restarted server and goes on: the lost items' records and messages are
        gone while the step's own cursor is not, so nothing else would ever send them."""
        have = {int(k) for k in self.client.hkeys(items_key(self.job_id))}
        have |= {json.loads(raw)["i"] for raw in self.client.hvals(pending_key(self.job_id))}
        missing = [i for i in range(total) if i not in have][:settings.JOB_IN_FLIGHT]
        if not missing:
            return
        logger.warning("job %s: items %s were lost with Redis (sent, then neither pending nor answered); sending "
                       "them again", self.job_id, missing)
        count_resumed(self.client, "items_lost")
        for index in missing:
            self._send_again(spec, index, total)

    def _send_again(self, spec: dict[str, Any], index: int, total: int) -> None:
        """Read item `index` again from the job's files (or its source) and send it."""
        items = self._items(spec, index, total)
        try:
            again = next(items, None)
            if again is not None:
                self._send(spec, *again)
        finally:
            items.close()

    def _messages_gone(self, waiting: list[str], model: str) -> list[str]:
        """Of items whose pixels are still there, those unanswered for _GONE_CHECK_S whose message is neither
        queued nor held by a worker: taken by a worker that died before recording it (the instant between a
        BRPOP and the script that records the message as delivered). Looked for once per step: it reads the bulk
        queue and the broker's unacknowledged messages, both bounded by the in-flight limits."""
        old = [tid for tid in waiting if self._ages.get(tid, 0.0) >= _GONE_CHECK_S]
        if not old or self._searched:
            return []
        self._searched = True
        # First where a message would be now, then where it was before: one moving meanwhile is missed by both
        # and sent again, which costs a duplicate, never an answer.
        held = "".join(map(text, self.client.hvals(kombu_redis.Channel.unacked_key)))
        queued = "".join(map(text, self.client.lrange(settings.bulk_queue(model), 0, -1)))
        return [tid for tid in old if tid not in held and tid not in queued]

    def _finish(self, spec: dict[str, Any], total: int, decode_error: str | None) -> None:
        if spec["kind"] == "video":
            result = video_result(spec["video"], self._outcomes(), decode_error)
            ok = bool(result["frames"])
            error = decode_error or "no frame could be classified"
        elif "evaluate" in spec:
            result = evaluation_result(zip(read_items(self.job_id), self._paged_outcomes(total)),
                                       spec["evaluate"]["labels"], spec["evaluate"]["versions"],
                                       settings.EVALUATION_MAX_LISTED, self._write_csv)
            result["thumbnails"] = self._thumbnails([w["file"] for figures in result["versions"].values()
                                                     for w in figures["wrong"]])
            ok = any(figures["images"] for figures in result["versions"].values())
            error = "no image could be classified: " + "; ".join(
                f"{item['name']}: {item['error']}" for item in result["failed"][:3])
        else:
            result = images_result([item["name"] for item in read_items(self.job_id)], self._outcomes())
            ok = result["succeeded"] > 0
            error = "no file could be classified: " + "; ".join(
                f"{item['name']}: {item.get('error', '')}" for item in result["items"][:3])
        fields: dict[str, Any] = {"status": "SUCCESS" if ok else "FAILURE", "result": json.dumps(result)}
        if not ok:
            fields["error"] = error
        if update_if_active(self.client, self.job_id, self.ttl, **fields) == "OK":
            self._announce_end(spec)
        discard(self.client, self.job_id)
        logger.info("job %s %s: %d items", self.job_id, fields["status"], total)

    def _announce_end(self, spec: dict[str, Any]) -> None:
        """The job's webhook, when it has a callback_url (a cancel is announced by the API that cancels)."""
        if spec.get("callback_url"):
            schedule(self.client, self.job_id, "job", spec["callback_url"])

    def _outcomes(self) -> dict[int, dict[str, Any]]:
        """Every item's outcome at once (a plain job's result lists them all anyway)."""
        return {int(k): json.loads(v) for k, v in self.client.hgetall(items_key(self.job_id)).items()}

    def _paged_outcomes(self, total: int, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Each item's outcome in order, fetched `page` at a time: an evaluation of 100,000 images never holds
        them all."""
        for first in range(0, total, page):
            fields = [str(i) for i in range(first, min(total, first + page))]
            for raw in self.client.hmget(items_key(self.job_id), fields):
                yield json.loads(raw) if raw else {"status": "FAILURE", "error": "no result was recorded"}

    def _write_csv(self, rows: list[list[Any]]) -> None:
        """Store one page of an evaluation's per-image rows for GET /result/<id>?format=csv."""
        out = io.StringIO()
        writer = csv.writer(out)
        for file, version, true, predicted, probability in rows:
            writer.writerow([file, version, true, predicted, probability, int(true == predicted)])
        with self.client.pipeline(transaction=False) as pipe:
            append_csv(pipe, self.job_id, out.getvalue(), self.ttl)
            pipe.execute()

    def _thumbnails(self, names: list[str]) -> dict[str, str]:
        """Small JPEG data URLs of the first THUMBNAILS images named (an evaluation's mistakes, for the web page),
        read from the job's files before they are deleted; an image that cannot be read is left out."""
        wanted = list(dict.fromkeys(names))[:THUMBNAILS]
        items = {item["name"]: item for item in read_items(self.job_id) if item["name"] in wanted}
        archives: dict[str, zipfile.ZipFile] = {}
        thumbnails: dict[str, str] = {}
        try:
            for name in wanted:
                try:
                    with Image.open(io.BytesIO(self._read(items[name], archives))) as image:
                        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                        out = io.BytesIO()
                        image.convert("RGB").save(out, "JPEG", quality=80)
                except (_ItemError, OSError, ValueError, Image.DecompressionBombError):
                    continue
                thumbnails[name] = "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()
        finally:
            for archive in archives.values():
                archive.close()
        return thumbnails


def _object(url: str, limit: int) -> bytes:
    """An `s3://` source's object, at most `limit` bytes (MAX_UPLOAD_MB)."""
    from s3fs import S3FileSystem  # imported only for an object store source: aiobotocore is a heavy import

    try:
        with S3FileSystem().open(url[len(S3_SCHEME):], "rb") as f:
            data = f.read(limit + 1)
    except Exception as exc:  # botocore, aiohttp and fsspec raise many kinds: the item fails alone
        raise _ItemError(f"cannot read {url}: {type(exc).__name__}: {exc}") from None
    if len(data) > limit:
        raise _ItemError(f"larger than {settings.MAX_UPLOAD_MB:g} MB (MAX_UPLOAD_MB)")
    return data


def _source_path(listed: str) -> Path:
    """A `source` job's file, resolved again as it is read: it must still lie inside JOB_SOURCE_ROOTS (the
    volume may have changed since the API listed it)."""
    real = Path(listed).resolve()
    if not any(inside(real, root) for root in source_roots()):
        raise _ItemError("this file now lies outside JOB_SOURCE_ROOTS (a symbolic link changed since the job "
                         "was submitted)")
    return real


def _outcome(meta: dict[str, Any] | None, age_s: float, ttl_s: int, compact: bool) -> dict[str, Any] | None:
    """An item's outcome from its classify task's stored state; None while it is still running. `compact`
    keeps only [class id, probability] pairs (`top`), which is all an evaluation needs."""
    if meta is None or meta.get("status") not in READY_STATES:
        if age_s > ttl_s:  # its pixels expired unanswered (no model worker for that long)
            return {"status": "FAILURE", "error": f"no answer within {ttl_s} s (RESULT_TTL_S)"}
        return None
    if meta["status"] == "SUCCESS" and compact:
        return {"status": "SUCCESS", "top": [[p["class_id"], p["probability"]] for p in meta["result"]["predictions"]]}
    if meta["status"] == "SUCCESS":
        return {"status": "SUCCESS", "predictions": meta["result"]["predictions"],
                "model_version": meta["result"].get("model_version")}
    return {"status": meta["status"], "error": failure_message(meta)}
