"""Worker process hooks: load and warm the model once per pool process, announce readiness.

TensorFlow is imported here, in the pool child after the fork, never in the parent
(CUDA and TF's thread pools do not survive a fork).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import redis
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import get_logger

import settings
from models.registry import get_spec
from tasks import celery_app

if TYPE_CHECKING:
    from models.keras_model import Classifier

logger = get_logger(__name__)

#: Redis key prefix of the readiness heartbeats that /readyz reads.
READY_KEY_PREFIX = "imageclf:worker:"
_HEARTBEAT_S = 5.0

_classifier: Classifier | None = None
_stop = threading.Event()


def classifier() -> Classifier:
    """The model of this pool process (loaded by the init hook)."""
    if _classifier is None:
        raise RuntimeError("the model is not loaded in this process")
    return _classifier


def _heartbeat(key: str, info: str) -> None:
    """Keep `key` alive while this process serves; it expires within 3 heartbeats after a crash."""
    client = redis.Redis.from_url(celery_app.conf.broker_url)
    while not _stop.is_set():
        try:
            client.set(key, info, ex=int(3 * _HEARTBEAT_S))
        except redis.RedisError as exc:
            logger.warning("readiness heartbeat failed: %s", exc)
        _stop.wait(_HEARTBEAT_S)
    client.delete(key)


@worker_process_init.connect
def load_model(**_: object) -> None:
    global _classifier
    from models.keras_model import load_classifier

    spec = get_spec(settings.MODEL)
    start = time.perf_counter()
    _classifier = load_classifier(spec, settings.MODEL_WEIGHTS, settings.CLASS_INDEX, settings.BATCH_SIZE)
    loaded = time.perf_counter() - start
    warm = _classifier.warm_up()
    logger.info(
        "model %s (weights %s) loaded in %.1f s, warmed up on batch sizes %s in %.1f s",
        spec.name, settings.MODEL_WEIGHTS, loaded, _classifier.buckets, warm,
    )
    key = f"{READY_KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"
    info = json.dumps({"model": spec.name, "pid": os.getpid(), "batch_sizes": _classifier.buckets,
                       "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
    threading.Thread(target=_heartbeat, args=(key, info), name="ready-heartbeat", daemon=True).start()


@worker_process_shutdown.connect
def stop_heartbeat(**_: object) -> None:
    _stop.set()
