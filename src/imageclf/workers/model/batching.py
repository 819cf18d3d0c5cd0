"""A celery-batches task class that batches adaptively instead of on a fixed clock.

Stock `Batches` flushes its buffer every `flush_interval` even while the single
pool process is still busy, so under load the pool queues a string of tiny
batches. Here a partial batch is flushed only when no batch is running: requests
that arrive during inference accumulate and go together as soon as the model is
free, a full batch (`flush_every`) goes at once, and a lone request on an idle
worker waits at most `flush_interval` — or not at all when `flush_when_idle` is set,
in which case batches form only from what arrives while the model is busy. No batch
exceeds `flush_every`.

When a batch ends with fewer interactive requests waiting than a full batch while the
recent arrival rate says more are about to come (closed-loop clients resubmit as soon as
they are answered), the idle model waits for them, at most `max_delay_share` of the last
batch's run time, instead of running a small batch and then a large one in turn (measured
on ResNet50/CPU: 28, 6, 24, 8, 29, 3, ... with small batches costing up to twice as much per
image). A lone request never waits: one arrival at a time gives no rate. This is Triton's
`max_queue_delay` with the delay scaled to the model's own batch time.

A request the broker delivers again (its worker died, maybe because of it) runs in a
batch of its own, so it cannot take innocent requests down with it again, and after
`max_deliveries` it is failed instead of run: a poison request does not loop forever.

Every request gets Celery's task events, which celery-batches does not send, so Flower
and other event consumers see the batched task like any other: task-received when it
reaches the worker, and task-succeeded/failed/revoked with its runtime, the version that
computed it and its batch's size (the result Flower shows), and the time its batch started
(`started`, which event consumers such as Flower store like any other field). A separate
task-started event per request would cost the worker, Redis and Flower a third more per
image for a state that lasts one model call.

Requests from the bulk queue (job images, video frames) come second: a batch takes
every waiting interactive request first and is topped up with bulk requests only
to `bulk_batch_size`, and bulk work never queues a batch behind a running one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import count
from queue import Empty, Queue
from typing import Any

from celery.utils.log import get_logger
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from imageclf.core.broker import acknowledge_together, release, requeue
from imageclf.workers.model import batch_size

logger = get_logger(__name__)


class PriorityBuffer:
    """The batch buffer: interactive requests before bulk ones, each kind first in, first out.

    Notes when each request reached this worker (for the stage breakdown) and tells `on_put`.
    """

    def __init__(self, bulk_prefix: str, on_put: Callable[[Any], None] | None = None) -> None:
        self._bulk_prefix = bulk_prefix
        self._on_put = on_put
        self._interactive: Queue = Queue()
        self._bulk: Queue = Queue()
        self._arrivals: deque[float] = deque(maxlen=256)

    def put(self, item: Any) -> None:
        item.received_at = time.time()
        if self._on_put is not None:
            self._on_put(item)
        routing_key = (getattr(item, "delivery_info", None) or {}).get("routing_key") or ""
        if routing_key.startswith(self._bulk_prefix):
            self._bulk.put(item)
        else:
            self._arrivals.append(time.monotonic())
            self._interactive.put(item)

    def interactive_rate(self, window_s: float = 1.0) -> float:
        """Interactive requests received per second over the last `window_s`."""
        since = time.monotonic() - window_s
        return sum(1 for t in self._arrivals if t > since) / window_s

    def qsize(self) -> int:
        return self._interactive.qsize() + self._bulk.qsize()

    def interactive(self) -> int:
        return self._interactive.qsize()

    def take(self, limit: int, bulk_limit: int) -> list:
        """Up to `limit` images, interactive requests first; bulk ones only while the batch is under `bulk_limit`
        images (a job's part counts its images, and goes whole: alone when it is larger)."""
        taken = _drain(self._interactive, limit)
        room = min(limit, bulk_limit) - len(taken)
        while room > 0 or not taken:
            try:
                item = self._bulk.queue[0]  # a peek: only this thread takes from the buffer
            except IndexError:
                break
            if taken and images(item) > room:
                break
            taken.append(self._bulk.get_nowait())
            room -= images(item)
        return taken


def images(request: Any) -> int:
    """How many images a request brings: a job's part several (imageclf.workers.jobs.chunks), any other one."""
    return len((getattr(request, "kwargs", None) or {}).get("items") or (None,))


def _drain(queue: Queue, limit: int) -> list:
    taken: list[Any] = []
    while len(taken) < limit:
        try:
            taken.append(queue.get_nowait())
        except Empty:
            break
    return taken


class AdaptiveBatches(Batches):
    abstract = True
    _tref: Any  # celery-batches' flush timer (set in its __init__)
    #: Flush as soon as a request arrives while no batch is running (no waiting for companions).
    flush_when_idle = False
    #: Requests from queues named with this prefix are served after the others.
    bulk_prefix = "bulk."
    #: Bulk requests only fill a batch up to this size.
    bulk_batch_size = 1
    #: Deliveries after which a request is failed instead of run.
    max_deliveries = 3
    #: An idle model waits for more arrivals at most this share of the last batch's run time.
    max_delay_share = 0.1
    DELIVERIES_PREFIX = "imageclf:deliveries:"

    def __init__(self) -> None:
        super().__init__()
        self._buffer = PriorityBuffer(self.bulk_prefix, on_put=self._received)
        self._running: dict[int, bool] = {}  # batches sent to the pool: serial -> a process accepted it
        self._serials = count()
        self._last_run_s = 0.0
        self._hold_until: float | None = None

    @property
    def _in_flight(self) -> int:
        return len(self._running)

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 (Celery's name)
        # Called at every start of the consumer, also after a lost broker connection.
        self._after_consumer_start(consumer)
        handler = super().Strategy(task, app, consumer)
        if not self.flush_when_idle:
            return handler
        hub = getattr(consumer, "hub", None)
        flush_pending = [False]

        def flush_if_idle() -> None:
            flush_pending[0] = False
            if self._in_flight == 0:
                self._do_flush()

        def handle_and_flush_when_idle(*args: Any, **kwargs: Any) -> None:
            # The broker hands over every message one BRPOP took (imageclf/core/broker.py) before the event
            # loop turns: flushing at its next turn sends them as one batch instead of 1 + the rest.
            handler(*args, **kwargs)
            if self._in_flight == 0 and not flush_pending[0]:
                if hub is None:
                    self._do_flush()
                else:
                    flush_pending[0] = True
                    hub.call_soon(flush_if_idle)

        return handle_and_flush_when_idle

    def _after_consumer_start(self, consumer: Any) -> None:
        """After a lost broker connection, Celery cleared the event loop's timers (the flush timer with them,
        which celery-batches never starts again while it believes one exists) and the pool dropped the batches
        no process had accepted yet (their callbacks never come; their messages come back from the broker).
        Forget both, and flush what the buffer holds on a new timer: else requests held for companions wait
        for a timer that never fires, and a batch that never returns keeps every bulk request waiting."""
        self._running = {serial: True for serial, accepted in self._running.items() if accepted}
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._buffer.qsize():
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)

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
        if self._in_flight == 0 and self._holding():
            return
        limit = self._limit()
        while buffer.qsize() and (self._in_flight == 0 or buffer.interactive() >= limit):
            batch = buffer.take(limit, self.bulk_batch_size)
            if not batch:
                break
            self.flush(batch)
        self._count = count(self._buffer.qsize() + 1)
        if self._buffer.qsize() == 0 and self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def _limit(self) -> int:
        """The batch size: the one the pool process measured as best (imageclf.workers.model.batch_size), or
        `flush_every`."""
        return min(self.flush_every, batch_size.chosen.value or self.flush_every)

    def _holding(self) -> bool:
        """Whether the idle model should wait a little longer for companions of the waiting requests.

        Called on every arrival and by the flush timer (every flush_interval) while requests wait.
        """
        waiting = self._buffer.interactive()
        if not waiting or waiting >= self._limit():
            self._hold_until = None
            return False
        now = time.monotonic()
        if self._hold_until is None:
            max_delay = self.max_delay_share * self._last_run_s
            if self._buffer.interactive_rate() * max_delay < 1.0:  # nobody else is about to arrive
                return False
            self._hold_until = now + max_delay
        if now < self._hold_until:
            return True
        self._hold_until = None
        return False

    def flush(self, requests: list) -> None:
        """Run the batch, except redelivered requests: each alone, or failed past `max_deliveries`."""
        fresh: list[Any] = []
        redelivered: list[Any] = []
        for request in requests:
            (redelivered if (request.delivery_info or {}).get("redelivered") else fresh).append(request)
        if fresh:
            self._run(fresh)
        for request in redelivered:
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

    @staticmethod
    def _received(request: Any) -> None:
        request.send_event("task-received", name=request.name, args=request.argsrepr or repr(request.args),
                           kwargs=request.kwargsrepr or repr(request.kwargs), retries=0, eta=None, expires=None,
                           root_id=request.id, parent_id=None)

    def _give_up(self, request: Any) -> None:
        logger.error("Request %s failed: delivered %d times, its worker died each time", request.id,
                     request.deliveries)
        exc = RuntimeError(f"not run again: delivered {request.deliveries} times and the worker died (or could "
                           f"not store its answer) each time (MAX_DELIVERIES={self.max_deliveries})")
        try:
            self.backend.mark_as_failure(request.id, exc, request=request, call_errbacks=False)
        except Exception:  # Redis away: it comes back and is given up on then
            logger.warning("could not record that %s was given up on; requeueing it", request.id, exc_info=True)
            requeue([request])
            return
        request.send_event("task-failed", exception=repr(exc), traceback="")
        request.acknowledge()

    def _run(self, requests: list) -> Any:
        """Send one batch to the pool; it counts as in flight until it returns or its process dies.

        Mirrors `Batches.flush` (acks_early on accept, acks_late on return) and adds the
        completion callbacks that flush what accumulated meanwhile.
        """
        acks_late = [r for r in requests if r.task.acks_late]
        acks_early = [r for r in requests if not r.task.acks_late]
        serial = next(self._serials)
        self._running[serial] = False
        started = [time.monotonic(), time.time()]  # when the pool took the batch: for its runtime, for events

        def on_accepted(pid: int, time_accepted: float) -> None:
            if serial in self._running:
                self._running[serial] = True
            started[:] = time.monotonic(), time.time()
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            self._last_run_s = time.monotonic() - started[0]
            # Only requests whose outcome is stored are acknowledged; the others (Redis went away under the
            # batch, or the batch function failed) go back to their queue, never dropped unanswered.
            unstored = set(result.get("unstored", ())) if isinstance(result, dict) else {r.id for r in requests}
            try:
                if unstored:
                    logger.warning("Batch of %d: %d answers not stored; requeueing them", len(requests),
                                   len(unstored))
                self._send_outcomes([r for r in requests if r.id not in unstored], result, self._last_run_s,
                                    started[1])
                acknowledge_together([r for r in acks_late if r.id not in unstored])
                requeue([r for r in acks_late if r.id in unstored])
            finally:  # whatever failed above, the worker goes on batching (else no lone request ever runs)
                self._finished(serial)

        def on_error(exc: Any) -> None:
            # The pool process died (e.g. killed): its acks_late requests are released, not renewed, so the
            # broker hands them out again after the visibility timeout, marked redelivered (run alone, counted
            # against max_deliveries): a request that kills its process does not come straight back to the
            # process started in its place.
            logger.error("Batch of %d lost: %r; its requests return after the visibility timeout", len(requests),
                         exc)
            try:
                release(acks_late)
            finally:
                self._finished(serial)

        return self._pool.apply_async(
            apply_batches_task,
            (self, ([self._simple(r) for r in requests],), 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_error,
        )

    @staticmethod
    def _send_outcomes(requests: list, summary: Any, runtime: float, started: float) -> None:
        """task-succeeded/failed/revoked per request, from the summary the batch function returned."""
        summary = summary if isinstance(summary, dict) else {}
        failed, revoked = summary.get("failed", {}), set(summary.get("revoked", []))
        outcomes = {task_id: f"version {version}: batch of {size}, inference {inference_ms:.0f} ms"
                    for version, size, inference_ms, ids in summary.get("groups", []) for task_id in ids}
        outcomes.update(summary.get("parts", {}))
        for req in requests:
            if req.id in failed:
                req.send_event("task-failed", exception=failed[req.id], traceback="", runtime=runtime,
                               started=started)
            elif req.id in revoked:
                req.send_event("task-revoked", terminated=False, signum=None, expired=True)
            elif req.id in outcomes:
                req.send_event("task-succeeded", result=outcomes[req.id], runtime=runtime, started=started)
            else:  # the batch function itself failed
                req.send_event("task-failed", exception="the batch failed; see the worker log", traceback="",
                               runtime=runtime, started=started)

    def _finished(self, serial: int) -> None:
        self._running.pop(serial, None)
        self._do_flush()
