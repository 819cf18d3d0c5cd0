"""The model worker's process hooks: load and warm the model once per pool process, then announce readiness.

TensorFlow is imported here, in the pool child after the fork, never in the parent
(CUDA and TF's thread pools do not survive a fork). Which model follows from the queues the worker
consumes (`-Q interactive.<model>,bulk.<model>`, workers.roles); a decoder loads none. A model is looked
up in MODEL_REPOSITORY first (the user's models, with versions rolled out live), then among the built-in
Keras applications.

A model that cannot be loaded at all stops its worker instead of letting Celery restart
the pool process in a loop: the reason goes to the log in one line and to Redis, where
the API, `/readyz` and the supervisor (`imageclf.launch.start_workers`, which then does not
restart it) read it.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, NoReturn

import redis
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import get_logger

from imageclf import settings
from imageclf.core import tracing
from imageclf.core.celery_app import celery_app, pixel_store
from imageclf.core.model_records import clear_failure, read_unloaded, record_failure, record_labels, record_served
from imageclf.core.readiness import beat_now, start_heartbeat, stop_heartbeat
from imageclf.core.redis_clients import while_redis_is_away
from imageclf.models.registry import MODELS as BUILT_IN
from imageclf.models.repository import RepositoryError, file_revision, model_dir
from imageclf.workers.model import batch_size
from imageclf.workers.model.versions import ServedModel
from imageclf.workers.roles import EXIT_SETUP_FAILED, served_model_name, worker_role

if TYPE_CHECKING:
    from imageclf.models.keras_model import Classifier

logger = get_logger(__name__)

#: Exit status of a worker process whose model cannot be loaded.
EXIT_MODEL_FAILED = 3

_served: ServedModel | None = None
_batch_choice: dict = {}


def served_model() -> ServedModel:
    """The model this pool process serves: its ready versions (read once per batch: a rollout switches
    between batches) and their routing."""
    if _served is None:
        raise RuntimeError("the model is not loaded in this process")
    return _served


def _open(name: str) -> ServedModel:
    """The model's loader: its repository folder when there is one, else the built-in of that name."""
    pad = None if settings.BATCH_PADDING == "auto" else settings.BATCH_PADDING == "on"
    folder = model_dir(settings.MODEL_REPOSITORY, name)
    if folder is not None:
        from imageclf.models.repository_loader import load_version

        return ServedModel(name, lambda version: load_version(
            name, folder, version, settings.BATCH_SIZE, settings.BACKEND, settings.MODEL_CACHE_DIR, pad),
            folder, settings.MODEL_POLL_S, on_change=_announce, unloaded_by=lambda: _unloaded_by(name))
    if name not in BUILT_IN:
        raise RepositoryError(f"unknown model {name!r}: no folder {os.path.join(settings.MODEL_REPOSITORY, name)} "
                              f"(MODEL_REPOSITORY) and not a built-in model ({', '.join(sorted(BUILT_IN))})")
    from imageclf.models.keras_model import load_classifier

    weights = settings.weights_for(name)
    return ServedModel(name, lambda _: load_classifier(
        BUILT_IN[name], weights, settings.CLASS_INDEX, settings.BATCH_SIZE, settings.BACKEND,
        settings.MODEL_CACHE_DIR, pad), poll_s=settings.MODEL_POLL_S, on_change=_announce,
        unloaded_by=lambda: _unloaded_by(name), builtin_revision=file_revision(weights, name, settings.CLASS_INDEX))


def _unloaded_by(name: str) -> str | None:
    """Who unloaded the model through the control API (None: it serves); read by the version watcher."""
    record = read_unloaded(pixel_store(), name)
    return f"unloaded by {record['by']}" if record else None


def _status() -> dict:
    """What this process's heartbeat says (GET /models shows it per worker)."""
    assert _served is not None
    return {"role": worker_role(), "model": _served.name, "pid": os.getpid(), "backend": settings.BACKEND,
            "bulk_batch": celery_app.tasks["classify"].bulk_batch_size,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), **_batch_choice, **_served.status()}


def _announce() -> None:
    """Publish a version change at once: the ready versions' inputs and routing for the API, the states for
    /models."""
    if _served is None:
        return
    try:
        current = _served.current
        record_served(pixel_store(), _served.name, {
            **(current.describe() if current is not None else {"version": None}),
            "inputs": _served.inputs(), "routing": _served.routing.describe(), "policy": _served.policy.describe(),
            "unloaded": _served.unloaded})
        if current is not None:
            record_labels(pixel_store(), _served.name, current.labels)
    except redis.RedisError:
        logger.warning("could not record the served version of %s", _served.name, exc_info=True)
    beat_now()


@worker_process_init.connect
def load_model(**_: object) -> None:
    """Load and warm this pool process's model; if that fails, the process exits and Celery starts another.

    Celery only logs an exception raised here and lets the process take tasks anyway: a model process whose
    Redis call failed mid-way (Redis restarting) ran every batch without a model (seen under chaos).
    """
    name = served_model_name()
    if name is None:
        return  # a decoder: workers.jobs.process sets it up
    try:
        _set_up(name)
    except Exception:
        logger.critical("this pool process could not be set up; it exits and another is started", exc_info=True)
        os._exit(EXIT_SETUP_FAILED)


def _set_up(name: str) -> None:
    global _served
    tracing.start_if_configured("imageclf-worker")
    try:
        served = while_redis_is_away(lambda: _started(name))
    except Exception as exc:
        _give_up(name, exc)
    # Only now: a pool process that Celery starts again while the worker stops would otherwise clear the reason
    # and leave the API saying "not loaded yet" until it fails once more.
    while_redis_is_away(lambda: clear_failure(pixel_store(), name))
    _served = served
    if served.current is not None:
        _choose_batch_size(served.current)
    _announce()
    start_heartbeat(celery_app.conf.broker_url, _status)
    from imageclf.workers.jobs.driver import (
        start_stall_sweep,  # a deployment without decoders still finds lost requests
    )

    start_stall_sweep(pixel_store())


def _started(name: str) -> ServedModel:
    served = _open(name)
    served.start()
    return served


def _choose_batch_size(model: Classifier) -> None:
    """BATCH_SIZE when set; else the smallest batch within 5 % of the best images/s, timed here and now."""
    global _batch_choice
    if not settings.BATCH_SIZE_AUTO:
        _batch_choice = {"batch_size": settings.BATCH_SIZE, "batch_size_from": "BATCH_SIZE"}
        return
    def changed(round_: int, before: int, now: int) -> None:
        logger.info("model %s: round %d of timing moved the batch size from %d to %d", model.name, round_, before, now)

    curve, rounds = batch_size.throughput_curve(model.predict, model.input_shape, settings.BATCH_SIZE,
                                                on_change=changed)
    batch_size.chosen.value = batch_size.pick(curve)
    _batch_choice = {"batch_size": batch_size.chosen.value, "batch_size_from": "measured",
                     "batch_curve": {str(k): v for k, v in curve.items()}, "batch_rounds": rounds}
    logger.info("model %s: batch size %d, the smallest within %.0f%% of the best images/s (%s; %d rounds)",
                model.name, batch_size.chosen.value, 100 * batch_size.TOLERANCE,
                ", ".join(f"{k}: {v:.1f}/s" for k, v in curve.items()), rounds)


def _give_up(name: str, exc: Exception) -> NoReturn:
    """Record why the model cannot be served and stop this whole worker (never returns)."""
    message = str(exc) if isinstance(exc, RepositoryError) else f"{type(exc).__name__}: {exc}"
    logger.critical("model %r cannot be served: %s", name, message)
    try:
        record_failure(pixel_store(), name, message)
    except redis.RedisError:
        logger.warning("could not record the failure of model %s in Redis", name)
    os.kill(os.getppid(), signal.SIGTERM)  # the worker's main process: a warm shutdown, nothing was taken
    os._exit(EXIT_MODEL_FAILED)


@worker_process_shutdown.connect
def on_shutdown(**_: object) -> None:
    if _served is None:
        return  # a decoder's (workers.jobs.process)
    _served.stop()
    stop_heartbeat()
    tracing.stop()
