"""A celery-batches task class that batches adaptively instead of on a fixed clock.

Stock `Batches` flushes its buffer every `flush_interval` even while the single
pool process is still busy, so under load the pool queues a string of tiny
batches. Here a partial batch is flushed only when no batch is running: requests
that arrive during inference accumulate and go together as soon as the model is
free, a full batch (`flush_every`) goes at once, and a lone request on an idle
worker waits at most `flush_interval` — or not at all when `flush_when_idle` is set,
in which case batches form only from what arrives while the model is busy. No batch
exceeds `flush_every`.

A request the broker delivers again (its worker died, maybe because of it) runs in a
batch of its own, so it cannot take innocent requests down with it again, and after
`max_deliveries` it is failed instead of run: a poison request does not loop forever.

Requests from the bulk queue (job images, video frames) come second: a batch takes
every waiting interactive request first and is topped up with bulk requests only
to `bulk_batch_size`, and bulk work never queues a batch behind a running one.
"""

from __future__ import annotations

import time
from itertools import count
from queue import Empty, Queue
from typing import Any

from celery.utils.log import get_logger
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

logger = get_logger(__name__)


class PriorityBuffer:
    """The batch buffer: interactive requests before bulk ones, each kind first in, first out.

    Notes when each request reached this worker (for the stage breakdown).
    """

    def __init__(self, bulk_queue: str) -> None:
        self._bulk_queue = bulk_queue
        self._interactive: Queue = Queue()
        self._bulk: Queue = Queue()

    def put(self, item: Any) -> None:
        item.received_at = time.time()
        routing_key = (getattr(item, "delivery_info", None) or {}).get("routing_key")
        (self._bulk if routing_key == self._bulk_queue else self._interactive).put(item)

    def qsize(self) -> int:
        return self._interactive.qsize() + self._bulk.qsize()

    def interactive(self) -> int:
        return self._interactive.qsize()

    def take(self, limit: int, bulk_limit: int) -> list:
        """Up to `limit` requests, interactive first; bulk ones only while the batch is under `bulk_limit`."""
        taken = _drain(self._interactive, limit)
        return taken + _drain(self._bulk, min(limit, bulk_limit) - len(taken))


def _drain(queue: Queue, limit: int) -> list:
    taken = []
    while len(taken) < limit:
        try:
            taken.append(queue.get_nowait())
        except Empty:
            break
    return taken


class AdaptiveBatches(Batches):
    abstract = True
    #: Flush as soon as a request arrives while no batch is running (no waiting for companions).
    flush_when_idle = False
    #: Requests from this queue are served after the others.
    bulk_queue = "bulk"
    #: Bulk requests only fill a batch up to this size.
    bulk_batch_size = 1
    #: Deliveries after which a request is failed instead of run.
    max_deliveries = 3
    DELIVERIES_PREFIX = "imageclf:deliveries:"

    def __init__(self) -> None:
        super().__init__()
        self._buffer = PriorityBuffer(self.bulk_queue)
        self._in_flight = 0

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 (Celery's name)
        handler = super().Strategy(task, app, consumer)
        if not self.flush_when_idle:
            return handler

        def handle_and_flush_when_idle(*args: Any, **kwargs: Any) -> None:
            handler(*args, **kwargs)
            if self._in_flight == 0:
                self._do_flush()

        return handle_and_flush_when_idle

    @staticmethod
    def _simple(request: Any) -> SimpleRequest:
        simple = SimpleRequest.from_request(request)
        simple.received_at = getattr(request, "received_at", None)
        simple.deliveries = getattr(request, "deliveries", 1)
        return simple

    def _do_flush(self) -> None:
        """Called by the timer, on every `flush_every`-th request, and when a batch returns.

        One batch runs at a time, except that a full batch of interactive requests may queue
        behind it (so a GPU never waits for the next batch under load).
        """
        buffer = self._buffer
        while buffer.qsize() and (self._in_flight == 0 or buffer.interactive() >= self.flush_every):
            batch = buffer.take(self.flush_every, self.bulk_batch_size)
            if not batch:
                break
            self.flush(batch)
        self._count = count(self._buffer.qsize() + 1)
        if self._buffer.qsize() == 0 and self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def flush(self, requests: list) -> None:
        """Run the batch, except redelivered requests: each alone, or failed past `max_deliveries`."""
        fresh = [r for r in requests if not (r.delivery_info or {}).get("redelivered")]
        if fresh:
            self._run(fresh)
        for request in requests:
            if request in fresh:
                continue
            request.deliveries = self._count_delivery(request)
            if request.deliveries > self.max_deliveries:
                self._give_up(request)
            else:
                self._run([request])

    def _count_delivery(self, request: Any) -> int:
        """This delivery's number (2, 3, ...), kept in Redis across worker restarts."""
        key = self.DELIVERIES_PREFIX + request.id
        try:
            with self.app.backend.client.pipeline() as pipe:
                redeliveries, _ = pipe.incr(key).expire(key, self.app.conf.result_expires or 86400).execute()
        except Exception:  # Redis away: run it; the count resumes when Redis is back
            logger.warning("could not count the deliveries of %s", request.id, exc_info=True)
            return 2
        return 1 + int(redeliveries)

    def _give_up(self, request: Any) -> None:
        logger.error("Request %s failed: delivered %d times, its worker died each time", request.id,
                     request.deliveries)
        exc = RuntimeError(f"not run again: delivered {request.deliveries} times and the worker died each time "
                           f"(MAX_DELIVERIES={self.max_deliveries})")
        self.backend.mark_as_failure(request.id, exc, request=request, call_errbacks=False)
        request.acknowledge()

    def _run(self, requests: list) -> Any:
        """Send one batch to the pool; it counts as in flight until it returns or its process dies.

        Mirrors `Batches.flush` (acks_early on accept, acks_late on return) and adds the
        completion callbacks that flush what accumulated meanwhile.
        """
        acks_late = [r for r in requests if r.task.acks_late]
        acks_early = [r for r in requests if not r.task.acks_late]
        self._in_flight += 1

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            for req in acks_late:
                req.acknowledge()
            self._finished()

        def on_error(exc: Any) -> None:
            # The pool process died (e.g. killed): acks_late requests stay unacknowledged
            # and the broker redelivers them after its visibility timeout.
            logger.error("Batch of %d lost: %r", len(requests), exc)
            self._finished()

        return self._pool.apply_async(
            apply_batches_task,
            (self, ([self._simple(r) for r in requests],), 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_error,
        )

    def _finished(self) -> None:
        self._in_flight -= 1
        self._do_flush()
