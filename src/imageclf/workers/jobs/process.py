"""The decoder's process hooks: each pool process of a worker that consumes the jobs queue alone clears the
uploads of expired jobs, announces itself (the job driver counts live decoders to size a job's window) and
runs the schedulers that outlive any one task: webhook deliveries and the sweep for stalled jobs and lost
requests (one process of all at a time, by a lock in Redis).
"""

from __future__ import annotations

import os

from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import get_logger

from imageclf.core import tracing
from imageclf.core.celery_app import celery_app, pixel_store
from imageclf.core.readiness import start_heartbeat, stop_heartbeat
from imageclf.core.redis_clients import while_redis_is_away
from imageclf.workers.jobs.driver import start_stall_sweep
from imageclf.workers.jobs.store import sweep_orphans
from imageclf.workers.jobs.webhooks import start_scheduler
from imageclf.workers.roles import EXIT_SETUP_FAILED, served_model_name

logger = get_logger(__name__)
_started = False


@worker_process_init.connect
def start_decoder(**_: object) -> None:
    """Set this decoder process up; if that fails, the process exits and Celery starts another (Celery only
    logs an exception raised here: a decoder ran without its schedulers, seen under chaos)."""
    global _started
    if served_model_name() is not None:
        return  # a model worker: workers.model.process sets it up
    try:
        tracing.start_if_configured("imageclf-decoder")
        tracing.instrument_celery()
        removed = while_redis_is_away(lambda: sweep_orphans(pixel_store(), older_than_s=3600))
        if removed:
            logger.info("deleted the uploads of %d expired jobs", len(removed))
        start_heartbeat(celery_app.conf.broker_url, lambda: {"role": "decoder", "pid": os.getpid()})
        start_scheduler(pixel_store())
        start_stall_sweep(pixel_store())
        _started = True
    except Exception:
        logger.critical("this pool process could not be set up; it exits and another is started", exc_info=True)
        os._exit(EXIT_SETUP_FAILED)


@worker_process_shutdown.connect
def stop_decoder(**_: object) -> None:
    if _started:
        stop_heartbeat()
        tracing.stop()
