"""The batched classify task: many single-image requests, one model call.

Each request carries `pixels_key` (the Redis key of uint8 H×W×3 bytes made by
models.images, see tasks.payloads), their `size` [height, width], `top`, and `sent_at`
(when the API queued it). Results carry the model version that answered and the
per-stage timings.
Every request gets its own result or failure in the backend: celery-batches
discards the task's return value and swallows its exceptions. The return value is
a summary for the worker's main process, which sends each request's task event.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np
from celery.utils.log import get_logger
from PIL import Image

import settings
from tasks import celery_app
from tasks.batching import AdaptiveBatches
from tasks.payloads import PROBABILITIES_PREFIX, drop_pixels, fetch_pixels
from tasks.result_store import store_success
from tasks.stats import record_batch, record_busy
from tasks.worker import classifier, pixel_store

if TYPE_CHECKING:
    from models.keras_model import Classifier

logger = get_logger(__name__)


def _parse(kwargs: dict, data: bytes | None, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """The request's image as an array of `shape` and its `top`, or ValueError naming what is wrong.

    Pixels sized for another version's input (sent while a rollout switched versions) are
    resized here rather than failed.
    """
    top = kwargs.get("top", 5)
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"'top' must be a positive integer, got {top!r}")
    if data is None:
        raise ValueError(f"no pixels under {kwargs.get('pixels_key')!r} (missing, or expired before the batch ran)")
    sent = kwargs.get("size") or shape[:2]
    if not (isinstance(sent, (list, tuple)) and len(sent) == 2 and all(isinstance(v, int) and v > 0 for v in sent)):
        raise ValueError(f"'size' must be [height, width], got {sent!r}")
    if len(data) != sent[0] * sent[1] * 3:
        raise ValueError(f"payload has {len(data)} bytes of pixels; {sent[0]}x{sent[1]} RGB needs "
                         f"{sent[0] * sent[1] * 3}")
    image = np.frombuffer(data, np.uint8).reshape(sent[0], sent[1], 3)
    if tuple(sent) != shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    return image, top


def bulk_batch_size(configured: int, batch_size: int, gpu_visible: bool) -> int:
    """BULK_BATCH_SIZE, or when unset: the full batch on a GPU, 1 on a CPU (see settings.py)."""
    if configured > 0:
        return min(configured, batch_size)
    return batch_size if gpu_visible else 1


def _gpu_visible() -> bool:
    """Whether this worker was given a GPU (checked in the consumer process, which never loads TF)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1")
    return os.path.exists("/dev/nvidia0")


@celery_app.task(
    base=AdaptiveBatches,
    name="classify",
    flush_every=settings.BATCH_SIZE,
    # With BATCH_WAIT_MS=0 the timer is only a safety net; idle workers flush on arrival.
    flush_interval=max(settings.BATCH_WAIT_MS, 5.0) / 1000.0,
    flush_when_idle=settings.BATCH_WAIT_MS == 0,
    bulk_prefix=settings.BULK_PREFIX,
    bulk_batch_size=bulk_batch_size(settings.BULK_BATCH_SIZE, settings.BATCH_SIZE, _gpu_visible()),
    max_deliveries=settings.MAX_DELIVERIES,
    acks_late=True,
)
def classify(requests: list) -> dict:
    """{"batch_size", "inference_ms", "failed": {id: error}, "revoked": [id]} of this batch.

    Two round trips to Redis per batch: one to read every request's pixels, one to store every
    answer with the batch's metrics and delete the pixels. Each round trip waits for Redis to be
    scheduled on a busy host, and while it waits the model computes nothing.
    """
    busy_since = time.perf_counter()
    model = classifier()
    client = pixel_store()
    keys = [str(req.kwargs.get("pixels_key", "")) for req in requests]
    try:
        blobs = fetch_pixels(client, keys)
    except Exception as exc:  # Redis away: fail the batch visibly rather than leave it pending
        for req in requests:
            celery_app.backend.mark_as_failure(req.id, exc, request=req, call_errbacks=False)
        return {"batch_size": 0, "failed": {req.id: repr(exc) for req in requests}}
    summary, answers = _classify_batch(model, requests, blobs)
    with client.pipeline(transaction=False) as pipe:
        # Metrics first: a client woken by its answer and scraping /metrics already sees its batch counted.
        if answers:
            record_batch(pipe, model.name, len(answers), summary["inference_ms"] / 1000.0)
        record_busy(pipe, model.name, time.perf_counter() - busy_since)
        for task_id, result, row in answers:
            if row is not None:  # before the answer's publish, so whoever it wakes finds the row
                pipe.set(PROBABILITIES_PREFIX + task_id, row, ex=settings.RESULT_TTL_S)
            store_success(pipe, task_id, result, settings.RESULT_TTL_S)
        drop_on_shards = drop_pixels(pipe, keys)
        pipe.execute()
    drop_on_shards()
    return summary


def _classify_batch(model: Classifier, requests: list, blobs: list[bytes | None]) -> tuple[dict, list]:
    """One model call for every valid request: the batch's summary and each answered request's
    (id, result, float32 probability row when the request asked for it).

    Requests that fail (bad payload, deadline passed, inference error) are marked at once, each on its own.
    """
    backend = celery_app.backend
    started = time.time()
    valid, images, tops = [], [], []
    summary: dict = {"batch_size": 0, "inference_ms": 0.0, "failed": {}, "revoked": []}
    for req, blob in zip(requests, blobs):
        expires_at = req.kwargs.get("expires_at")
        if isinstance(expires_at, (int, float)) and started > expires_at:
            backend.mark_as_revoked(req.id, "deadline passed before the batch ran; not computed", request=req)
            summary["revoked"].append(req.id)
            continue
        try:
            image, top = _parse(req.kwargs, blob, model.input_shape)
            images.append(image)
            tops.append(top)
            valid.append(req)
        except Exception as exc:  # one bad payload fails alone
            backend.mark_as_failure(req.id, exc, request=req, call_errbacks=False)
            summary["failed"][req.id] = f"{type(exc).__name__}: {exc}"
    if not valid:
        return summary, []
    try:
        t0 = time.perf_counter()
        probabilities = model.predict(np.stack(images))
        inference_ms = (time.perf_counter() - t0) * 1000.0
    except Exception as exc:
        logger.exception("inference failed for a batch of %d", len(valid))
        for req in valid:
            backend.mark_as_failure(req.id, exc, request=req, call_errbacks=False)
            summary["failed"][req.id] = f"{type(exc).__name__}: {exc}"
        return summary, []
    batch_id = uuid.uuid4().hex
    logger.info(json.dumps({"event": "batch", "batch_id": batch_id, "model": model.name,
                            "model_version": model.version, "size": len(valid),
                            "padded": model.bucket_for(len(valid)), "inference_ms": round(inference_ms, 1)}))
    done_at = time.time()
    answers = []
    for req, row, top in zip(valid, probabilities, tops):
        result = {
            "model": model.name,
            "model_version": model.version,
            "predictions": model.top(row, top),
            "batch_id": batch_id,
            "batch_size": len(valid),
            "timings": _timings(req, started, inference_ms),
            "deliveries": getattr(req, "deliveries", 1),
            "done_at": done_at,
        }
        answers.append((req.id, result, row.astype("<f4").tobytes() if req.kwargs.get("probabilities") else None))
    summary.update(batch_size=len(valid), inference_ms=round(inference_ms, 2))
    return summary, answers


def _timings(req: object, batch_started: float, inference_ms: float) -> dict[str, float]:
    """Milliseconds spent in the broker queue, waiting for a batch, and in the model."""
    sent = req.kwargs.get("sent_at")
    received = getattr(req, "received_at", None)
    timings = {"inference_ms": round(inference_ms, 2)}
    if isinstance(sent, (int, float)) and received:
        timings["queue_ms"] = round((received - sent) * 1000, 2)
    if received:
        timings["batch_wait_ms"] = round((batch_started - received) * 1000, 2)
    return timings
