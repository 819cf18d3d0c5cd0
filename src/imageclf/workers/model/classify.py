"""The batched classify task: many single-image requests, one model call.

Each request carries `pixels_key` (the Redis key of uint8 H×W×3 bytes made by
imageclf.models.images, see imageclf.core.payloads), their `size` [height, width], `top`, `sent_at`
(when the API queued it), and the `version` the API routed it to (`pinned` when the
client named it; else a version gone meanwhile falls back to the default). One model
call never mixes versions: a batch runs one call per version it holds. Results carry
the model version that answered and the per-stage timings. A request marked `shadow`
is queued again for that version (imageclf.core.shadow); a shadow copy (`compare`) is compared,
not answered. A job's part (`items`: several images one after another, see imageclf.workers.jobs.chunks)
is split into its images, each computed with the others of its version, and answered by one record:
{"items": the part's item indices, "records": their other fields (if any), "answers": one {"predictions",
"model_version"} or {"error"} per image}.
Every request gets its own result or failure in the backend: celery-batches
discards the task's return value and swallows its exceptions. The return value is
a summary for the worker's main process, which sends each request's task event.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from celery.utils.log import get_logger
from PIL import Image

from imageclf import settings
from imageclf.core import database, prediction_log, tracing
from imageclf.core.celery_app import celery_app, pixel_store
from imageclf.core.payloads import PROBABILITIES_PREFIX, drop_pixels, fetch_pixels
from imageclf.core.result_store import store_success
from imageclf.core.review_queue import Keeper
from imageclf.core.shadow import queue_shadow, record_comparison
from imageclf.core.stats import record_batch, record_busy, record_errors, record_latencies
from imageclf.workers.model.batching import AdaptiveBatches
from imageclf.workers.model.process import served_model
from imageclf.workers.model.review import selector
from imageclf.workers.roles import worker_role

if TYPE_CHECKING:
    from imageclf.models.keras_model import Classifier

logger = get_logger(__name__)
#: Redis away (killed, restarting, a failover): the batch's requests are put back on the queue, not failed.
_REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError)


def _parse(kwargs: dict, data: bytes | bytearray | None, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """The request's image as an array of `shape` and its `top`, or ValueError naming what is wrong.

    Pixels sized for another version's input (sent while a rollout switched versions) are
    resized here rather than failed.
    """
    top = _top(kwargs)
    if data is None:
        raise ValueError(f"no pixels under {kwargs.get('pixels_key')!r} (missing, or expired before the batch ran)")
    sent = kwargs.get("size") or shape[:2]
    if not (isinstance(sent, (list, tuple)) and len(sent) == 2 and all(isinstance(v, int) and v > 0 for v in sent)):
        raise ValueError(f"'size' must be [height, width], got {sent!r}")
    if len(data) != sent[0] * sent[1] * 3:
        raise ValueError(f"payload has {len(data)} bytes of pixels; {sent[0]}x{sent[1]} RGB needs "
                         f"{sent[0] * sent[1] * 3}")
    return _fit(np.frombuffer(data, np.uint8).reshape(sent[0], sent[1], 3), shape), top


def _top(kwargs: dict) -> int:
    top = kwargs.get("top", 5)
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"'top' must be a positive integer, got {top!r}")
    return top


def _fit(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """`image` resized to the model's input, if it was sized for another."""
    if image.shape[:2] == shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _part_images(kwargs: dict, data: bytearray | None) -> list[np.ndarray]:
    """A job part's images, or ValueError naming what is wrong with the whole part."""
    count = len(kwargs["items"])
    if data is None:
        raise ValueError(f"no pixels under {kwargs.get('pixels_key')!r} (missing, or expired before the batch ran)")
    sizes = kwargs.get("sizes") or [kwargs.get("size")] * count
    if len(sizes) != count or not all(isinstance(s, list) and len(s) == 2 for s in sizes):
        raise ValueError(f"'sizes' must give [height, width] for each of the {count} images")
    needed = sum(height * width * 3 for height, width in sizes)
    if needed != len(data):
        raise ValueError(f"the part has {len(data)} bytes of pixels; its {count} images need {needed}")
    if all(size == sizes[0] for size in sizes):  # views of one array (_batch hands it to the model whole)
        return list(np.frombuffer(data, np.uint8).reshape(count, sizes[0][0], sizes[0][1], 3))
    images, offset = [], 0
    for height, width in sizes:
        images.append(np.frombuffer(data, np.uint8, height * width * 3, offset).reshape(height, width, 3))
        offset += height * width * 3
    return images


class _Parts:
    """The job parts of a batch: each image's answer (or error) as it comes, stored as one record per part."""

    def __init__(self) -> None:
        self.requests: dict[str, Any] = {}
        self.answers: dict[str, list[dict | None]] = {}

    def add(self, req: Any) -> None:
        self.requests[req.id] = req
        self.answers[req.id] = [None] * len(req.kwargs["items"])

    def answer(self, req: Any, slot: int, answer: dict) -> None:
        self.answers[req.id][slot] = answer

    def store(self, pipe: redis.client.Pipeline, name: str) -> None:
        for request_id, req in self.requests.items():
            answers = [answer or {"error": "not computed"} for answer in self.answers[request_id]]
            result = {"model": name, "items": req.kwargs["items"], "answers": answers}
            if "records" in req.kwargs:
                result["records"] = req.kwargs["records"]
            store_success(pipe, request_id, result, settings.RESULT_TTL_S)

    def shown(self) -> dict[str, str]:
        """What Flower shows as each part's outcome."""
        return {request_id: f"{sum('error' not in (a or {}) for a in answers)} of {len(answers)} images answered"
                for request_id, answers in self.answers.items()}


def bulk_batch_size(configured: int, batch_size: int, gpu_visible: bool) -> int:
    """BULK_BATCH_SIZE, or when unset: the full batch on a GPU, 1 on a CPU (see imageclf/settings.py)."""
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
    answer with the batch's metrics and delete the pixels (and a third for the comparisons when
    the batch also holds shadow copies, which run after the answers are out). Each round trip
    waits for Redis to be scheduled on a busy host, and while it waits the model computes nothing.
    """
    busy_since = time.perf_counter()
    served = served_model()
    versions, default = served.served, served.current  # read once: a rollout switches between batches
    client = pixel_store()
    keys = [_pixels_key(req) for req in requests]
    try:
        blobs = fetch_pixels(client, keys)
    except _REDIS_AWAY:  # the worker's main process puts them back on the queue (imageclf/workers/model/batching.py)
        logger.warning("batch of %d: Redis is away; its requests go back to the queue", len(requests))
        return {"batch_size": 0, "unstored": [req.id for req in requests]}
    summary: dict = {"batch_size": 0, "inference_ms": 0.0, "failed": {}, "revoked": [], "groups": [],
                     "unstored": []}
    parts = _Parts()
    try:
        groups = _by_version(requests, blobs, versions, default, summary, served.unloaded, parts)
    except _REDIS_AWAY:
        return {**summary, "unstored": [req.id for req in requests]}
    # Clients' requests first, and their answers stored before any shadow copy runs: no answer waits for one.
    answered = [(model, group) for (model, shadow), group in groups.items() if not shadow]
    shadows = [(model, group) for (model, shadow), group in groups.items() if shadow]
    shadow_keys = {_pixels_key(req) for _, group in shadows for req, *_ in group}
    kept: set[str] = set()  # pixels a shadow copy will read
    drops = []
    for part in (answered, shadows) if shadows else (answered,):
        computed = []
        try:
            # One transaction: the pixels are deleted only with the answers stored (a refused write, a Redis
            # killed mid-way, keeps both for the requeued requests).
            with client.pipeline(transaction=True) as pipe:
                for model, group in part:
                    computed.append((model, _classify_group(model, group, summary, parts)))
                    _store(pipe, served.name, model, computed[-1][1], kept, parts)
                if part is answered:
                    parts.store(pipe, served.name)
                record_busy(pipe, served.name, time.perf_counter() - busy_since)
                busy_since = time.perf_counter()
                keep = kept | shadow_keys
                done = list(shadow_keys) if part is shadows else [k for k in keys if k not in keep]
                drop_on_shards = drop_pixels(pipe, done, watched=any(_watched(req) for req in requests))
                pipe.execute()
            drops.append(drop_on_shards)
            _log(served.name, computed)
        except _REDIS_AWAY:  # maybe not stored: computed again after a requeue (the same answers), pixels kept
            logger.warning("batch of %d: Redis went away while storing its answers; they go back to the queue",
                           len(requests))
            summary["unstored"] = list({req.id for _, group in part for req, *_ in group}
                                       | (set(parts.requests) if part is answered else set()))
            break  # a batch whose answers were not stored runs none of its shadow copies
    for drop_on_shards in drops:
        drop_on_shards()
    summary["parts"] = parts.shown()
    return summary


def _log(name: str, computed: list[tuple[Classifier, list]]) -> None:
    """Hand the stored answers' rows to the prediction log's writer (imageclf.core.prediction_log): computed
    here, from the probabilities in hand, and written by another thread; nothing here waits for the database."""
    writer = _log_writer()
    if writer is None:
        return
    at = time.time()
    for model, answers in computed:
        answered = [(who, row) for req, _, row, slot, image in answers
                    if (who := _selected(name, model.version, _logged_as(req, slot), row, image)) is not None]
        writer.add(prediction_log.rows(name, model.version, answered, at, settings.PREDICTION_LOG_TOP,
                                       settings.PREDICTION_LOG_SHARE))


def _selected(name: str, version: int, who: dict[str, Any] | None, row: np.ndarray, image: np.ndarray
              ) -> dict[str, Any] | None:
    """`who`, with the image to keep when the model's review rules select it (imageclf.workers.model.review)."""
    if who is not None:
        pending = selector().pending(name, version, who, row, image)
        if pending is not None:
            who["review"] = pending
    return who


def _logged_as(req: Any, slot: int | None) -> dict[str, Any] | None:
    """What names an answered image in the prediction log (None: a job part from before jobs were named)."""
    kwargs = req.kwargs
    if slot is not None:
        job = kwargs.get("job")
        if job is None:
            return None
        item = int(kwargs["items"][slot])
        return {"request_id": prediction_log.job_item_id(job, item), "route": "job", "job": job, "item": item,
                "key": kwargs.get("key")}
    compare = kwargs.get("compare")
    if compare is not None:
        return {"request_id": compare.get("id") or req.id, "route": "shadow", "key": compare.get("key"),
                "against": compare.get("class_id")}
    return {"request_id": req.id, "route": kwargs.get("route") or "predict", "key": kwargs.get("key")}


_writer: prediction_log.Writer | None = None


def _log_writer() -> prediction_log.Writer | None:
    """This pool process's writer, started on first use (None: PREDICTION_LOG=off or no DATABASE_URL)."""
    global _writer
    if _writer is None and settings.PREDICTION_LOG and settings.DATABASE_URL:
        _writer = prediction_log.Writer(database.connection, pixel_store(), settings.PREDICTION_LOG_BUFFER,
                                        keep=Keeper(pixel_store()).keep)
        prediction_log.start_retention(database.engine, pixel_store(), settings.PREDICTION_LOG_DAYS)
    return _writer


def _pixels_key(req: Any) -> str:
    return str(req.kwargs.get("pixels_key", ""))


def _watched(req: Any) -> bool:
    """Whether the API watches the request until it is answered (imageclf.core.request_watch): any but a job's part or a
    shadow copy (both on the bulk lane, each watched by what sent it)."""
    return not str((req.delivery_info or {}).get("routing_key") or "").startswith(settings.BULK_PREFIX)


def _store(pipe: redis.client.Pipeline, name: str, model: Classifier, answers: list, kept: set[str],
           parts: _Parts) -> None:
    """Queue on `pipe` a group's metrics, answers (or shadow comparisons) and shadow copies; a shadow copy's
    pixels go into `kept`, a job part's answers into `parts` (stored once the part's every image has one)."""
    if not answers:
        return
    inference_ms = answers[0][1]["timings"]["inference_ms"]
    per_image_ms = inference_ms / len(answers)
    # Metrics first: a client woken by its answer and scraping /metrics already sees its batch counted.
    record_batch(pipe, name, model.version, len(answers), inference_ms / 1000.0,
                 sum(1 for req, *_ in answers if "compare" not in req.kwargs))
    record_latencies(pipe, name, model.version, [result["done_at"] - sent for req, result, _, slot, _ in answers
                                                 if slot is None and "compare" not in req.kwargs
                                                 and isinstance(sent := req.kwargs.get("sent_at"), (int, float))])
    for req, result, row, slot, _ in answers:
        if slot is not None:
            parts.answer(req, slot, {"predictions": result["predictions"], "model_version": model.version})
            continue
        if "compare" in req.kwargs:
            record_comparison(pipe, name, req.kwargs["compare"], model.version, row, per_image_ms)
            continue
        if req.kwargs.get("probabilities"):  # before the answer's publish, so whoever it wakes finds it
            pipe.set(PROBABILITIES_PREFIX + req.id, row.astype("<f4").tobytes(), ex=settings.RESULT_TTL_S)
        store_success(pipe, req.id, result, settings.RESULT_TTL_S)
        if req.kwargs.get("shadow") is not None:
            queue_shadow(pipe, celery_app, name, settings.shadow_copies_queue(name), settings.SHADOW_MAX_QUEUED,
                         req.kwargs, row, model.version, per_image_ms, req.id)
            kept.add(_pixels_key(req))


def _by_version(requests: list, blobs: list[bytearray | None], versions: dict[int, Classifier],
                default: Classifier | None, summary: dict, unloaded: str | None, parts: _Parts
                ) -> dict[tuple[Classifier, bool], list]:
    """Each valid image's (request, image, top, its place in a job part or None), grouped by the version that
    computes it and by whether it is a shadow copy.

    Requests that cannot run (deadline passed, bad payload, a pinned version not served here) are
    marked at once, each on its own; so is each image of a part that cannot.
    """
    backend = celery_app.backend
    started = time.time()
    groups: dict[tuple[Classifier, bool], list] = {}
    for req, blob in zip(requests, blobs):
        expires_at = req.kwargs.get("expires_at")
        if isinstance(expires_at, (int, float)) and started > expires_at:
            backend.mark_as_revoked(req.id, "deadline passed before the batch ran; not computed", request=req)
            summary["revoked"].append(req.id)
            continue
        try:
            if "items" in req.kwargs:
                _split_part(req, blob, versions, default, unloaded, parts, groups)
                continue
            model = _model_for(req.kwargs, versions, default, unloaded)
            image, top = _parse(req.kwargs, blob, model.input_shape)
            groups.setdefault((model, "compare" in req.kwargs), []).append((req, image, top, None))
        except Exception as exc:  # one bad payload fails alone
            backend.mark_as_failure(req.id, exc, request=req, call_errbacks=False)
            summary["failed"][req.id] = f"{type(exc).__name__}: {exc}"
    return groups


def _batch(images: list[np.ndarray]) -> np.ndarray:
    """The images as one array: a job part's own buffer when they are all of it, in order (no copy), else stacked."""
    whole, first = images[0].base, images[0]
    if isinstance(whole, np.ndarray) and whole.size == first.size * len(images) and whole.dtype == first.dtype:
        start = whole.__array_interface__["data"][0]
        if all(image.base is whole and image.shape == first.shape
               and image.__array_interface__["data"][0] == start + i * first.nbytes for i, image in enumerate(images)):
            return whole.reshape(len(images), *first.shape)
    return np.stack(images)


def _split_part(req: Any, blob: bytearray | None, versions: dict[int, Classifier], default: Classifier | None,
                unloaded: str | None, parts: _Parts, groups: dict[tuple[Classifier, bool], list]) -> None:
    """Add a job part's images to the groups of their versions (ValueError when the part as a whole is bad)."""
    images, top = _part_images(req.kwargs, blob), _top(req.kwargs)
    parts.add(req)
    named = req.kwargs.get("versions") or [req.kwargs.get("version")] * len(images)
    for slot, (image, version) in enumerate(zip(images, named)):
        try:
            model = _model_for({"version": version, "pinned": req.kwargs.get("pinned")}, versions, default, unloaded)
        except LookupError as exc:
            parts.answer(req, slot, {"error": f"{type(exc).__name__}: {exc}"})
            continue
        groups.setdefault((model, False), []).append((req, _fit(image, model.input_shape), top, slot))


def _model_for(kwargs: dict, versions: dict[int, Classifier], default: Classifier | None,
               unloaded: str | None) -> Classifier:
    """The version a request runs on: the one it was routed to, or the default when that one left and the
    client did not name it; LookupError when neither can run it."""
    version = kwargs.get("version")
    model = versions.get(version) if version is not None else default
    if model is None and not kwargs.get("pinned"):
        model = default
    if model is None:
        why = unloaded or f"served here: {', '.join(map(str, versions)) or 'none'}"
        raise LookupError(f"version {version} is not served ({why})" if version is not None else
                          f"no version is served ({why})")
    return model


def _classify_group(model: Classifier, group: list, summary: dict, parts: _Parts) -> list:
    """One model call for a version's images: each answered one's (request, result, probability row, place in
    its part, image).

    On an inference error every image of the group is marked failed.
    """
    backend = celery_app.backend
    requests = list({req.id: req for req, *_ in group}.values())  # a part's images share their request
    started = time.time()
    try:
        t0 = time.perf_counter()
        probabilities = model.predict(_batch([image for _, image, _, _ in group]))
        inference_ms = (time.perf_counter() - t0) * 1000.0
    except Exception as exc:
        logger.exception("inference failed for a batch of %d (version %s)", len(group), model.version)
        try:
            record_errors(pixel_store(), served_model().name, model.version, len(group))
        except redis.RedisError:  # counted for the promotion's error-rate guard when Redis can take it
            pass
        for req, _, _, slot in group:
            if slot is not None:
                parts.answer(req, slot, {"error": f"{type(exc).__name__}: {exc}"})
                continue
            backend.mark_as_failure(req.id, exc, request=req, call_errbacks=False)
            summary["failed"][req.id] = f"{type(exc).__name__}: {exc}"
        return []
    batch_id, padded = uuid.uuid4().hex, model.bucket_for(len(group))
    if tracing.enabled():
        tracing.record_batch(
            [(req.kwargs.get("trace"), req.kwargs.get("sent_at"), getattr(req, "received_at", None))
             for req in requests],
            started, started + inference_ms / 1000.0, **{
                "imageclf.model": model.name, "imageclf.version": model.version,
                "imageclf.batch_size": len(group), "imageclf.batch_id": batch_id,
                "imageclf.padded_to": padded, "imageclf.worker": worker_role()})
    logger.info(json.dumps({"event": "batch", "batch_id": batch_id, "model": model.name,
                            "model_version": model.version, "worker": worker_role(), "size": len(group),
                            "padded": padded, "inference_ms": round(inference_ms, 1)}))
    done_at = time.time()
    answers = []
    for (req, image, top, slot), row in zip(group, probabilities):
        result = {
            "model": model.name,
            "model_version": model.version,
            "predictions": model.top(row, top),
            "batch_id": batch_id,
            "batch_size": len(group),
            "timings": _timings(req, started, inference_ms),
            "deliveries": getattr(req, "deliveries", 1),
            "done_at": done_at,
        }
        answers.append((req, result, row, slot, image))
    summary["batch_size"] += len(group)
    summary["inference_ms"] = round(summary["inference_ms"] + inference_ms, 2)
    summary["groups"].append([model.version, len(group), round(inference_ms, 2), [r.id for r in requests]])
    return answers


def _timings(req: Any, batch_started: float, inference_ms: float) -> dict[str, float]:
    """Milliseconds spent in the broker queue, waiting for a batch, and in the model."""
    sent = req.kwargs.get("sent_at")
    received = getattr(req, "received_at", None)
    timings = {"inference_ms": round(inference_ms, 2)}
    if isinstance(sent, (int, float)) and received:
        timings["queue_ms"] = round((received - sent) * 1000, 2)
    if received:
        timings["batch_wait_ms"] = round((batch_started - received) * 1000, 2)
    return timings
