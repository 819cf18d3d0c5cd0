"""The job driver, run by the decoder workers (-Q jobs): cut the job into chunks, keep them in flight, gather.

A job (images, zip entries, or a video's sampled frames) is driven by a chain of short `job_step`
tasks. Each step gathers the answers of the job's chunks, sends more chunks (imageclf.workers.jobs.chunks: every
decoder process on every host decodes them) while fewer than the job's window and its model's bulk
window are in flight, stores progress, and finishes the job when every item has an outcome. A step
that can send nothing more ends at once, and the next one is queued with a countdown (_FULL_S while the
windows are full, _POLL_S while it waits for the last answers): the driver never holds a decoder process
while it waits, so every decoder decodes.

The windows, in chunks of JOB_CHUNK items (at most half of JOB_IN_FLIGHT when that is set):
- a job: JOB_IN_FLIGHT items, or by default four chunks per live decoder process, so that each decoder
  always has its next chunks until the next step refills the window;
- a model, all jobs together: BULK_IN_FLIGHT images per live model worker waiting for the model, plus
  four chunks per decoder being decoded, and never more than BULK_IN_FLIGHT messages (parts) per model
  worker: a 4-hour video never sits in Redis as pixels, and the model workers keep prefetch room for
  /predict requests.

Whatever dies, the chain goes on:
- a step whose pool process is killed is requeued (`reject_on_worker_lost`) and, finding its dead
  predecessor's lock on this host, resumes at once from the cursor stored in Redis; chunks sent since
  that cursor was stored are sent again, and outcomes are kept per item index, so none is counted twice;
- a step held by a worker whose main process died comes back from the broker (the visibility timeout,
  imageclf/core/broker.py);
- a chunk whose messages are nowhere (lost with a failed-over Redis, taken by a worker that died before
  recording it) is found and sent again (_resend_lost), and items lost with their records are sent again
  once the cursor is at the end (_resend_missing);
- anything else that breaks the chain is found by the stall sweep that the decoders run: an active job
  with no progress for JOB_STALL_S and no step holding it gets its step sent again.
Only the step whose task id the job names as its driver works on it (job_store), so redelivered and
resent copies never become parallel chains. A job cancelled by the API stops at its next step (within
_POLL_S), and the job's queued pixels and files are deleted.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import itertools
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import redis
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis
from PIL import Image

from imageclf import settings
from imageclf.core.celery_app import celery_app, pixel_store
from imageclf.core.model_records import InputLookup, ModelUnavailable
from imageclf.core.payloads import ISSUED_PREFIX
from imageclf.core.readiness import live_workers
from imageclf.core.redis_clients import text
from imageclf.core.request_watch import resend_lost
from imageclf.core.result_store import RESULT_KEY_PREFIX, failure_message
from imageclf.workers.jobs.chunks import ItemError, job_chunk, read_item
from imageclf.workers.jobs.results import evaluation_result, images_result, video_result
from imageclf.workers.jobs.store import (
    FINAL,
    acquire_lock,
    active_jobs,
    append_csv,
    bulk_in_flight_key,
    count_resumed,
    discard,
    hand_over,
    is_driver,
    items_key,
    job_dir,
    part_id,
    pending_key,
    prune_in_flight,
    read_items,
    read_job,
    release_lock,
    take_stalled,
    update_if_active,
    window_member,
)
from imageclf.workers.jobs.webhooks import schedule

logger = get_logger(__name__)

STEP_S = 2.0          # most work per step before handing over to the next one
THUMBNAILS = 48       # an evaluation's mistakes shown as thumbnails (the first ones)
THUMBNAIL_PX = 96
_POLL_S = 0.1         # the countdown of the next step when this one sent everything and waits for answers
_FULL_S = 0.25        # ... and when the windows are full (each decoder has chunks for longer than that)
_LOST_CHECK_S = 10.0  # a chunk unanswered this long is looked for in the queues (see _resend_lost)
_GONE_CHECK_S = 30.0  # a request unanswered this long is checked for its message (imageclf.core.request_watch)
_LOCK_S = 60.0        # a step's lock frees itself after this when its host is gone (on its own host: at once)
_SWEEP_LOCK = "imageclf:jobs:sweeping"  # held by the decoder process sweeping for stalled jobs this period


#: Redis or the broker away (a restart, a Sentinel failover): the step is sent again and resumes from the
#: job's stored cursor. A step that failed instead would be acknowledged, and its job would never go on.
_REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, OperationalError)
#: Sending the next step (or a retry) waits up to a minute for the broker; kombu's default gives up in 0.6 s.
_SEND_POLICY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


# No task events: a job takes several steps a second, which Flower would list by the thousand (it shows the
# job's chunks instead).
@celery_app.task(name="job_step", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
                 send_events=False,
                 autoretry_for=_REDIS_AWAY, max_retries=None, retry_backoff=1, retry_backoff_max=10,
                 retry_jitter=False, retry_kwargs={"retry_policy": _SEND_POLICY})
def job_step(self: Any, job_id: str) -> None:
    """Work on the job until it can send nothing more (at most STEP_S), then hand it to the next step (a new
    task id) and queue that."""
    client = pixel_store()
    step_id = self.request.id
    if not is_driver(client, job_id, step_id):  # the job ended, or a later step drives it: a stale copy
        return
    token, freed = acquire_lock(client, job_id, _LOCK_S)
    if token is None:  # a copy of this step runs, or a step of a lost host holds the lock until it expires
        job_step.apply_async((job_id,), task_id=step_id, countdown=1.0, retry_policy=_SEND_POLICY)
        return
    if freed:
        logger.warning("job %s: the process running its last step died; resuming from its stored cursor", job_id)
        count_resumed(client, "driver_died")
    try:
        more, countdown = _Driver(client, job_id).run(STEP_S)
    finally:
        with contextlib.suppress(*_REDIS_AWAY):  # else the lock frees itself after _LOCK_S
            release_lock(client, job_id, token)
    next_id = str(uuid.uuid4())
    if more and hand_over(client, job_id, step_id, next_id):
        job_step.apply_async((job_id,), task_id=next_id, countdown=countdown, retry_policy=_SEND_POLICY)


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
    message was lost (imageclf.core.request_watch), one process of all the workers at a time (a lock in Redis), until
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
_workers: tuple[float, list[dict[str, Any]]] = (0.0, [])  # (when read, what the live workers announced)
_pruned: dict[str, float] = {}  # model window -> when this process last pruned it


def _live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """The live workers, read at most once a second per process (a scan of their heartbeats)."""
    global _workers
    if time.monotonic() - _workers[0] >= 1.0:
        _workers = (time.monotonic(), live_workers(client))
    return _workers[1]


def _inputs(client: redis.Redis) -> InputLookup:
    """This decoder process's cached view of each model's current input."""
    global _input_lookup
    if _input_lookup is None:
        _input_lookup = InputLookup(client)
    return _input_lookup


def windows(workers: list[dict[str, Any]], model: str) -> tuple[int, int, int, int]:
    """(chunk size, part size, the job's window, the model's window; windows in chunks) for a job of `model`,
    from what the live workers announced (see the module's docstring)."""
    models = [w for w in workers if w.get("model") == model and w.get("role") == "model"]
    decoders = max(1, sum(w.get("role") == "decoder" for w in workers))
    chunk = settings.JOB_CHUNK
    if settings.JOB_IN_FLIGHT:
        chunk = max(1, min(chunk, settings.JOB_IN_FLIGHT // 2))
    part = min(chunk, min((int(w.get("bulk_batch") or 1) for w in models), default=1))
    decoding = 4 * decoders
    job_window = max(1, settings.JOB_IN_FLIGHT // chunk) if settings.JOB_IN_FLIGHT else decoding
    room = settings.BULK_IN_FLIGHT * max(1, len(models))  # images waiting for the model, and messages
    model_window = min(math.ceil(room / chunk) + decoding, max(1, room // math.ceil(chunk / part)))
    return chunk, part, job_window, model_window


class _Driver:
    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.ttl = settings.RESULT_TTL_S
        self.compact = False  # an evaluation keeps only class ids and probabilities of its items' answers
        self.inputs: dict[str, list[Any]] = {}  # what items are sized for: {version: [h, w, resize]}, "" the job's
        self.unavailable: str | None = None  # why no item can be classified now (the model serves no version)
        self.chunk = self.part = 1
        self.in_flight_key = ""

    def run(self, budget_s: float) -> tuple[bool, float | None]:
        """Work on the job until nothing more can be sent, at most `budget_s`: (whether another step is
        needed, the countdown before it)."""
        job = read_job(self.client, self.job_id)
        if job is None or job["status"] in FINAL:
            discard(self.client, self.job_id)
            return False, None
        if not job_dir(self.job_id).is_dir():  # the API wrote the files where this decoder cannot see them
            error = (f"this decoder ({socket.gethostname()}) cannot read the job's files: {job_dir(self.job_id)} "
                     f"does not exist here. UPLOAD_DIR must be one volume shared by the API and every decoder")
            logger.error("job %s: %s", self.job_id, error)
            if update_if_active(self.client, self.job_id, self.ttl, status="FAILURE", error=error) == "OK":
                self._announce_end(job["spec"])
            discard(self.client, self.job_id)
            return False, None
        spec, cursor = job["spec"], job["cursor"]
        total = min(job["total"], job.get("video_end", job["total"]))
        extra: dict[str, Any] = {"decode_error": job["decode_error"]} if "decode_error" in job else {}
        self.compact = "evaluate" in spec
        self._size_items(spec)
        self.client.expire(ISSUED_PREFIX + self.job_id, self.ttl)
        self.chunk, self.part, job_window, model_window = windows(_live_workers(self.client), spec["model"])
        self.in_flight_key = bulk_in_flight_key(spec["model"])
        if time.monotonic() - _pruned.get(self.in_flight_key, -_LOST_CHECK_S) >= _LOST_CHECK_S:
            _pruned[self.in_flight_key] = time.monotonic()
            prune_in_flight(self.client, self.in_flight_key, _LOST_CHECK_S)
        listed = read_items(self.job_id, cursor) if spec["kind"] != "video" else None
        deadline = time.monotonic() + budget_s
        try:
            while True:
                done, in_flight = self._collect()
                self._resend_lost(spec)
                sent = 0
                room = min(job_window - in_flight, model_window - self.client.zcard(self.in_flight_key))
                while sent < room and cursor < total and time.monotonic() < deadline:
                    count = min(self.chunk, total - cursor)
                    self._send(spec, cursor, count, listed)
                    cursor, sent = cursor + count, sent + 1
                state = update_if_active(self.client, self.job_id, self.ttl, status="PROGRESS",
                                         done=min(done, total), total=total, cursor=cursor, **extra)
                if state != "OK":  # cancelled (or expired) meanwhile
                    discard(self.client, self.job_id)
                    return False, None
                if cursor >= total and in_flight == 0 and done >= total:
                    self._finish(spec, total, job.get("decode_error"))
                    return False, None
                if cursor >= total and in_flight == 0 and sent == 0:
                    self._resend_missing(spec, total)
                if time.monotonic() >= deadline:
                    return True, None
                if sent == 0:
                    return True, _POLL_S if cursor >= total else _FULL_S
        finally:
            if listed is not None:
                listed.close()

    def _size_items(self, spec: dict[str, Any]) -> None:
        """What the job's items are sized for: the job's version (chosen at submit: named, or by the traffic
        shares) and each ready version's input (an evaluation item names its version). When the model cannot
        be served at all (its workers failed to load it), or the version the job named is no longer served,
        every item fails with that reason (`unavailable`)."""
        try:
            routes = _inputs(self.client).routes_of(spec["model"])
            version = spec.get("version")
            job_input = routes.inputs.get(version) if version is not None else routes.default
            if job_input is None and spec.get("pinned") and "evaluate" not in spec:
                raise ModelUnavailable(f"model {spec['model']!r} version {version} is not served now; served "
                                       f"versions: {', '.join(map(str, routes.versions()))}")
            job_input = job_input or routes.default
            if job_input is None:
                raise ModelUnavailable(f"model {spec['model']!r} serves no version now")
        except ModelUnavailable as exc:
            self.unavailable = str(exc)
            return
        self.inputs = {str(v): [i.height, i.width, i.resize] for v, i in routes.inputs.items()}
        self.inputs[""] = [job_input.height, job_input.width, job_input.resize]

    def _send(self, spec: dict[str, Any], first: int, count: int,
              listed: Generator[dict[str, Any], None, None] | None) -> None:
        """Send items first..first+count-1 as one chunk to the decoders (or fail them at once, the model being
        unavailable); `listed` yields an image job's listed items from `first` on."""
        items = list(itertools.islice(listed, count)) if listed is not None else None
        if self.unavailable is not None:
            failed: dict[Any, str] = {str(i): json.dumps({"i": i, "status": "FAILURE", "error": self.unavailable})
                      for i in range(first, first + count)}
            self.client.hset(items_key(self.job_id), mapping=failed)
            return
        chunk_id = str(uuid.uuid4())
        chunk: dict[str, Any] = {"id": chunk_id, "first": first, "count": count, "part": self.part,
                                 "inputs": self.inputs}
        if items is not None:
            chunk["items"] = items
        job_chunk.apply_async((self.job_id, chunk), task_id=f"{chunk_id}.decode", queue=settings.JOBS_QUEUE,
                              argsrepr=repr((self.job_id, {"first": first, "count": count})),  # what Flower shows
                              retry_policy=_SEND_POLICY)
        # Recorded after sending: a crash in between re-sends the chunk from the stored cursor.
        now = time.time()
        parts = math.ceil(count / self.part)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(pending_key(self.job_id), chunk_id, json.dumps(
                {"first": first, "count": count, "part": self.part, "parts": parts, "left": list(range(parts)),
                 "sent": now}))
            pipe.zadd(self.in_flight_key, {window_member(self.job_id, chunk_id): now})
            pipe.execute()

    def _send_range(self, spec: dict[str, Any], first: int, count: int) -> None:
        """Send items first..first+count-1 again, read again from the job's list."""
        listed = read_items(self.job_id, first) if spec["kind"] != "video" else None
        try:
            for start in range(first, first + count, self.chunk):
                self._send(spec, start, min(self.chunk, first + count - start), listed)
        finally:
            if listed is not None:
                listed.close()

    def _pending(self) -> dict[str, dict[str, Any]]:
        return {text(cid): json.loads(raw) for cid, raw in self.client.hgetall(pending_key(self.job_id)).items()}

    def _collect(self) -> tuple[int, int]:
        """Move the answers of the chunks' parts into the items; returns (items with an outcome, chunks in
        flight)."""
        pending = self._pending()
        waiting = [(cid, k) for cid, chunk in pending.items() for k in chunk["left"]]
        metas = self.client.mget([RESULT_KEY_PREFIX + part_id(cid, k) for cid, k in waiting]) if waiting else []
        now = time.time()
        outcomes: dict[Any, str] = {}  # item index -> its outcome (Any: redis-py's mapping type)
        failed: list[tuple[range, str]] = []  # parts that failed whole: their items without an outcome fail
        answered: list[str] = []
        for (cid, k), raw in zip(waiting, metas):
            chunk = pending[cid]
            meta = json.loads(raw) if raw else None
            if meta is None or meta.get("status") not in ("SUCCESS", "FAILURE", "REVOKED"):
                if now - chunk["sent"] <= self.ttl:
                    continue
                meta = {"status": "FAILURE", "error": f"no answer within {self.ttl} s (RESULT_TTL_S)"}
            if meta["status"] == "SUCCESS":
                part = meta["result"]
                records = part.get("records") or [{}] * len(part["items"])
                for index, record, answer in zip(part["items"], records, part["answers"]):
                    outcomes[str(index)] = json.dumps({"i": index, **record, **self._outcome(answer)})
            else:
                start = chunk["first"] + k * chunk["part"]
                failed.append((range(start, min(chunk["first"] + chunk["count"], start + chunk["part"])),
                               meta.get("error") or failure_message(meta)))
            chunk["left"].remove(k)
            answered.append(RESULT_KEY_PREFIX + part_id(cid, k))
        for indices, error in failed:
            have = self.client.hmget(items_key(self.job_id), [str(i) for i in indices])
            outcomes.update({str(i): json.dumps({"i": i, "status": "FAILURE", "error": error})
                             for i, there in zip(indices, have) if there is None and str(i) not in outcomes})
        # In this order, whatever a Redis killed mid-way keeps (a prefix) is consistent: the outcomes are
        # stored before their chunk stops being pending, and the answers deleted last.
        with self.client.pipeline(transaction=False) as pipe:
            if outcomes:
                pipe.hset(items_key(self.job_id), mapping=outcomes)
            for cid, chunk in pending.items():
                if not chunk["left"]:
                    pipe.hdel(pending_key(self.job_id), cid)
                    pipe.zrem(self.in_flight_key, window_member(self.job_id, cid))
                elif len(chunk["left"]) < chunk["parts"]:
                    pipe.hset(pending_key(self.job_id), cid, json.dumps(chunk))
            if answered:
                pipe.delete(*answered)
            for key in (pending_key(self.job_id), items_key(self.job_id)):
                pipe.expire(key, self.ttl)
            pipe.hlen(items_key(self.job_id))
            pipe.hlen(pending_key(self.job_id))
            *_, done, in_flight = pipe.execute()
        return done, in_flight

    def _outcome(self, answer: dict[str, Any]) -> dict[str, Any]:
        """An item's outcome from its answer in a part's record; `compact` keeps only [class id, probability]
        pairs (`top`), which is all an evaluation needs."""
        if "error" in answer:
            return {"status": "FAILURE", "error": answer["error"]}
        if self.compact:
            return {"status": "SUCCESS", "top": [[p["class_id"], p["probability"]] for p in answer["predictions"]]}
        return {"status": "SUCCESS", "predictions": answer["predictions"], "model_version": answer["model_version"]}

    def _resend_lost(self, spec: dict[str, Any]) -> None:
        """Send again the chunks unanswered for _LOST_CHECK_S whose messages are nowhere: neither queued (to the
        decoders or the model) nor held by a worker, and without an answer. Lost with a Redis master that died
        before its replica had them (replication is asynchronous), or taken by a worker that died before
        recording it (the instant between a BRPOP and the script that records the message as delivered).
        Looked for at most once per _LOST_CHECK_S per job: it reads the queues and the broker's unacknowledged
        messages, all bounded by the windows."""
        now = time.time()
        old = {cid: chunk for cid, chunk in self._pending().items() if now - chunk["sent"] >= _LOST_CHECK_S}
        if not old or not self.client.set(pending_key(self.job_id) + ":searched", 1, nx=True,
                                          px=int(_LOST_CHECK_S * 1000)):
            return
        for cid in self._nowhere(list(old), [settings.bulk_queue(spec["model"]), settings.JOBS_QUEUE]):
            chunk = old[cid]
            answers = self.client.mget([RESULT_KEY_PREFIX + part_id(cid, k) for k in chunk["left"]])
            if all(answers):
                continue  # answered meanwhile
            logger.warning("job %s: the chunk of items %d-%d was lost by the broker (a failover?); sending it again",
                           self.job_id, chunk["first"], chunk["first"] + chunk["count"] - 1)
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hdel(pending_key(self.job_id), cid)
                pipe.zrem(self.in_flight_key, window_member(self.job_id, cid))
                pipe.execute()
            self._send_range(spec, chunk["first"], chunk["count"])

    def _nowhere(self, chunk_ids: list[str], queues: list[str]) -> list[str]:
        """The chunks none of whose messages (`<id>.decode` to the decoders, `<id>.<k>` to the model) is in
        `queues` or held by a worker. First where a message would be now, then where it was before: one moving
        meanwhile is missed by both and sent again, which costs a duplicate, never an answer."""
        held = "".join(map(text, self.client.hvals(kombu_redis.Channel.unacked_key)))
        queued = "".join(text(message) for queue in queues for message in self.client.lrange(queue, 0, -1))
        return [cid for cid in chunk_ids if cid not in held and cid not in queued]

    def _resend_missing(self, spec: dict[str, Any], total: int) -> None:
        """Send again the items the cursor is past that are neither answered nor pending. A Redis killed while this
        step ran loses what it had not written to disk (the append-only file is synced every second), and the
        step's client reconnects to the restarted server and goes on: the lost items' records and messages are
        gone while the step's own cursor is not, so nothing else would ever send them."""
        have = {int(k) for k in self.client.hkeys(items_key(self.job_id))}
        for chunk in self._pending().values():
            have.update(range(chunk["first"], chunk["first"] + chunk["count"]))
        missing = [i for i in range(total) if i not in have]
        if not missing:
            return
        logger.warning("job %s: %d items were lost with Redis (sent, then neither pending nor answered), from item "
                       "%d; sending them again", self.job_id, len(missing), missing[0])
        count_resumed(self.client, "items_lost")
        for _, run in itertools.groupby(enumerate(missing), lambda pair: pair[1] - pair[0]):
            indices = [i for _, i in run]
            self._send_range(spec, indices[0], len(indices))

    def _finish(self, spec: dict[str, Any], total: int, decode_error: str | None) -> None:
        if spec["kind"] == "video":
            # Frames past where the video ended (a corrupt stretch) are left out, as a single pass stops there.
            result = video_result(spec["video"], {i: o for i, o in self._outcomes().items() if i < total},
                                  decode_error)
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
        thumbnails: dict[str, str] = {}
        for name in wanted:
            try:
                with Image.open(io.BytesIO(read_item(self.job_id, items[name]))) as image:
                    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                    out = io.BytesIO()
                    image.convert("RGB").save(out, "JPEG", quality=80)
            except (ItemError, OSError, ValueError, Image.DecompressionBombError):
                continue
            thumbnails[name] = "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()
        return thumbnails
