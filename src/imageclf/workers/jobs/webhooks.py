"""Completion webhooks: when a job or a request that answered 202 ends (SUCCESS, FAILURE or REVOKED), POST the
JSON GET /result/<id> would return to the client's `callback_url`, signed.

Headers: `X-Imageclf-Event` (`job.success`, `request.failure`, ...), `X-Imageclf-Delivery` (one id per event,
the same on every attempt, so a receiver can drop repeats) and `X-Imageclf-Signature: sha256=<hex HMAC-SHA256
of the body with WEBHOOK_SECRET>`.

Each attempt is one `deliver_webhook` Celery task on the decoders' `webhooks` queue (never a model worker),
acknowledged late and requeued when its process is killed (reject_on_worker_lost), so a killed worker's attempt
is made again. Waits live in Redis, not in Celery countdowns (which the Redis broker would redeliver past its
visibility timeout): a sorted set of due attempts, which every decoder process's scheduler thread claims when
due (atomically, so no two take the same one) and removes once their tasks are queued. A 2xx ends the delivery, a
410 stops it, anything else is retried after WEBHOOK_BACKOFF_S × 2^n, at most WEBHOOK_MAX_ATTEMPTS attempts (8:
about an hour). Every attempt is recorded for GET /result's `webhook`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import redis
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError

from imageclf import settings
from imageclf.core import tracing
from imageclf.core.celery_app import celery_app, pixel_store
from imageclf.workers.jobs.result_bodies import WEBHOOK_PREFIX, result_body
from imageclf.workers.jobs.store import FINAL
from imageclf.workers.jobs.webhook_targets import TargetRefused, check_target

logger = get_logger(__name__)

DUE_KEY = "imageclf:webhooks:due"
MAX_RESPONSE_BYTES = 64 * 1024
_WATCH_S = 1.0  # how often a request not yet ended is looked at again
#: How long a scheduler's claim on a due attempt lasts: if its process dies before the attempt's task is queued,
#: the attempt is due again after this.
CLAIM_S = 60.0
# Claim the entries due by ARGV[1] (at most ARGV[2]): each is moved to ARGV[3], so that no other scheduler takes it
# meanwhile; it leaves the set only once its task is queued.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], entry) end
return due
"""


def schedule(client: redis.Redis | redis.client.Pipeline, task_id: str, kind: str, url: str,
             delay_s: float = 0.0, attempt: int = 1, delivery: str | None = None,
             trace: dict[str, str] | None = None) -> None:
    """Deliver the end of `task_id` (a "job" or a "request") to `url` once it has ended, `delay_s` from now.
    Its attempts join the trace `trace` (imageclf.core.tracing; default: the current span's)."""
    trace = trace or tracing.carrier()
    entry = json.dumps({"id": task_id, "kind": kind, "url": url, "attempt": attempt,
                        "delivery": delivery or str(uuid.uuid4()), "since": time.time(),
                        **({"trace": trace} if trace else {})})
    client.zadd(DUE_KEY, {entry: time.time() + delay_s})


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(settings.WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


@celery_app.task(name="deliver_webhook", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_webhook(entry: dict[str, Any]) -> None:
    """One attempt (or, for a request still running, one look at it)."""
    client = pixel_store()
    body = result_body(client, entry["id"], entry["kind"])
    if body is None:
        logger.warning("webhook for %s dropped: its result expired", entry["id"])
        return
    if body["status"] not in FINAL:
        if time.time() - entry["since"] < settings.RESULT_TTL_S:
            schedule(client, entry["id"], entry["kind"], entry["url"], _WATCH_S, entry["attempt"], entry["delivery"],
                     entry.get("trace"))
        return
    data = json.dumps(body).encode()
    event = f"{'job' if entry['kind'] == 'job' else 'request'}.{body['status'].lower()}"
    started = time.time()
    status, error = _post(entry, event, data)
    tracing.record("webhook", started, time.time(), **{
        "imageclf.event": event, "imageclf.attempt": entry["attempt"], "imageclf.delivery": entry["delivery"],
        "http.response.status_code": status or 0, **({"error.type": error[:100]} if error else {})})
    key = WEBHOOK_PREFIX + entry["id"]
    with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "attempts", 1)
        pipe.hset(key, mapping={"last_status": status or "", "error": error or "",
                                **({"delivered_at": time.time()} if status and 200 <= status < 300 else {})})
        pipe.expire(key, settings.RESULT_TTL_S)
        ended = status is not None and (200 <= status < 300 or status == 410)
        refused = (error or "").startswith("refused:")  # it would be refused again
        retry = not ended and not refused and entry["attempt"] < settings.WEBHOOK_MAX_ATTEMPTS
        if retry:
            schedule(pipe, entry["id"], entry["kind"], entry["url"],
                     settings.WEBHOOK_BACKOFF_S * 2 ** (entry["attempt"] - 1), entry["attempt"] + 1, entry["delivery"],
                     entry.get("trace"))
        pipe.execute()
    logger.info("webhook %s attempt %d for %s: %s%s", entry["delivery"], entry["attempt"], entry["id"],
                status or error, "" if retry else " (done)")


def _post(entry: dict[str, Any], event: str, data: bytes) -> tuple[int | None, str | None]:
    """(HTTP status, None) or (None, why no status): the target is checked again (DNS may have changed), the
    answer's body is read up to MAX_RESPONSE_BYTES, the whole call bounded by WEBHOOK_TIMEOUT_S."""
    try:
        check_target(entry["url"])
    except TargetRefused as exc:
        return None, f"refused: {exc}"
    headers = {"Content-Type": "application/json", "User-Agent": "imageclf-webhook", "X-Imageclf-Event": event,
               "X-Imageclf-Delivery": entry["delivery"], "X-Imageclf-Signature": signature(data)}
    try:
        with httpx.Client(timeout=settings.WEBHOOK_TIMEOUT_S, follow_redirects=False) as http, \
                http.stream("POST", entry["url"], content=data, headers=headers) as response:
            read = 0
            for chunk in response.iter_bytes():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code, None
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]


def send_due(client: redis.Redis, send: Callable[[dict[str, Any]], None], now: float | None = None,
             claim_s: float = CLAIM_S) -> int:
    """Queue (with `send`) every attempt due by `now`; how many were sent. Each is claimed first and removed only
    once sent: a process that dies in between leaves it to be sent again `claim_s` later (at least once; the
    receiver tells repeats by X-Imageclf-Delivery)."""
    now = time.time() if now is None else now
    if not client.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=1):  # a plain read; the script only when due
        return 0
    sent = 0
    for raw in client.eval(_CLAIM_DUE, 1, DUE_KEY, now, 100, now + claim_s):
        entry = json.loads(raw)
        with tracing.within(entry.get("trace")):  # the attempt's task joins the event's trace
            send(entry)
        client.zrem(DUE_KEY, raw)
        sent += 1
    return sent


def _queue_attempt(entry: dict[str, Any]) -> None:
    deliver_webhook.apply_async((entry,), queue=settings.WEBHOOKS_QUEUE)


def start_scheduler(client: redis.Redis, poll_s: float = 0.5) -> None:
    """In a decoder process: move due attempts to the webhooks queue until the process ends."""
    def loop() -> None:
        while True:
            try:
                send_due(client, _queue_attempt)
            except (redis.RedisError, OSError, OperationalError) as exc:  # Redis away: the entries wait in Redis
                logger.warning("webhook scheduler: %s", exc)
            time.sleep(poll_s)

    threading.Thread(target=loop, name="webhook-scheduler", daemon=True).start()
