"""Worker process hooks: load and warm the model once per pool process, then announce readiness.

TensorFlow is imported here, in the pool child after the fork, never in the parent
(CUDA and TF's thread pools do not survive a fork). Only model workers load it, and
which model follows from the queues a worker consumes (`-Q interactive.<model>,bulk.<model>`);
a worker started for the jobs queue alone (a decoder) loads none.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import redis
from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown
from celery.utils.log import get_logger

import settings
from models.registry import get_spec
from tasks import celery_app
from tasks.job_store import sweep_orphans
from tasks.readiness import start_heartbeat, stop_heartbeat

if TYPE_CHECKING:
    from models.keras_model import Classifier

logger = get_logger(__name__)

_classifier: Classifier | None = None
_pixel_store: redis.Redis | None = None
_served_model: str | None = settings.MODELS[0]


def classifier() -> Classifier:
    """The model of this pool process (loaded by the init hook)."""
    if _classifier is None:
        raise RuntimeError("the model is not loaded in this process")
    return _classifier


def pixel_store() -> redis.Redis:
    """This process's Redis client for request pixels (made after the fork, never shared)."""
    global _pixel_store
    if _pixel_store is None:
        _pixel_store = redis.Redis.from_url(celery_app.conf.broker_url, socket_timeout=30)
    return _pixel_store


def model_of_queues(queues: object) -> str | None:
    """The model a worker started with `-Q queues` serves (None: a decoder; no -Q: the default model)."""
    if not queues:
        return settings.MODELS[0]
    names = [n.strip() for n in (queues.split(",") if isinstance(queues, str) else queues)]
    models = {n.split(".", 1)[1] for n in names
              if n.startswith((settings.INTERACTIVE_PREFIX, settings.BULK_PREFIX))}
    if len(models) > 1:
        raise SystemExit(f"one worker serves one model; -Q names {sorted(models)}")
    return models.pop() if models else None


@celeryd_init.connect
def note_role(options: dict | None = None, **_: object) -> None:
    """Runs in the worker's main process before the pool forks, so children inherit the answer."""
    global _served_model
    _served_model = model_of_queues((options or {}).get("queues"))


@worker_process_init.connect
def load_model(**_: object) -> None:
    global _classifier
    if _served_model is None:
        removed = sweep_orphans(pixel_store(), older_than_s=3600)
        if removed:
            logger.info("deleted the uploads of %d expired jobs", len(removed))
        start_heartbeat(celery_app.conf.broker_url, {"role": "decoder", "pid": os.getpid()})
        return
    from models.keras_model import load_classifier

    spec = get_spec(_served_model)
    weights = settings.weights_for(spec.name)
    start = time.perf_counter()
    pad = None if settings.BATCH_PADDING == "auto" else settings.BATCH_PADDING == "on"
    _classifier = load_classifier(spec, weights, settings.CLASS_INDEX, settings.BATCH_SIZE,
                                  settings.BACKEND, settings.MODEL_CACHE_DIR, pad)
    loaded = time.perf_counter() - start
    warm = _classifier.warm_up()
    logger.info(
        "model %s (weights %s, backend %s, padding %s) loaded in %.1f s, warmed up on batch sizes %s in %.1f s",
        spec.name, weights, settings.BACKEND, _classifier.pad, loaded, _classifier.buckets, warm,
    )
    start_heartbeat(celery_app.conf.broker_url, {
        "role": "model",
        "model": spec.name,
        "pid": os.getpid(),
        "backend": settings.BACKEND,
        "padded_batch_sizes": _classifier.buckets if _classifier.pad else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    })


@worker_process_shutdown.connect
def on_shutdown(**_: object) -> None:
    stop_heartbeat()
