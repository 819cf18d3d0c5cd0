"""Running a v2 inference request through the same queue as /predict, for HTTP and gRPC alike.

Runs inside the Flask app's context (the gRPC server pushes one per call): the model
lookup, decoding, backpressure, queueing and waiting are /predict's own functions. The N
images of a request become N classify requests, batched with everything else, and the
answer waits for all of them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from imageclf import settings
from imageclf.api.errors import APIError
from imageclf.api.inference_protocol import InferAnswer, InferRequest
from imageclf.api.models import Route, describe_models, route
from imageclf.api.served import served
from imageclf.api.submissions import queue_unavailable, redis_client, submit_classify, wait_for
from imageclf.api.uploads import decode_upload
from imageclf.core.payloads import PROBABILITIES_PREFIX
from imageclf.core.result_store import failure_message


def known_model(model: str) -> None:
    """404 for a model this service does not serve."""
    if model not in served():
        raise APIError(404, f"unknown model {model!r}; this service serves: {', '.join(served())}")


def served_input(model: str, version: str | None, split: bool = True) -> Route:
    """The route of a request to `model` (at `version` when given); 404 for a model or version this service does
    not serve now, 400 for a version that is not a number. Without `split`: the default version's."""
    known_model(model)
    return route(model, version, split=split)


def described(model: str) -> dict[str, Any]:
    """GET /models' entry of `model` (its versions, labels, workers)."""
    return next((m for m in describe_models() if m["name"] == model), {})


def model_versions(entry: dict[str, Any]) -> list[str]:
    """The versions a model's workers know (ready or not), or the served one, from its `described` entry."""
    versions = sorted(entry.get("versions") or {}, key=lambda v: int(v) if str(v).isdigit() else 0)
    return [str(v) for v in versions] or [str(entry.get("served_version") or 1)]


def run(request: InferRequest, size: Route, timeout_s: float | None = None, route: str = "v2") -> InferAnswer:
    """Queue each image, sized for `size` (the request's served_input), wait for every answer, gather the outputs.

    `timeout_s` (a gRPC client's deadline) bounds the wait and, like /predict's `deadline`, makes
    workers skip images still queued when it passes; without it the wait is PREDICT_TIMEOUT_S.
    """
    shape = (size.height, size.width)
    if request.images is not None:
        pixels = [decode_upload(data, f"image[{i}]", shape, size.resize) for i, data in enumerate(request.images)]
    elif request.pixels is not None:
        pixels = [np.ascontiguousarray(row).tobytes() for row in request.pixels]
    else:
        raise APIError(400, "send one input: 'image' (encoded files) or 'pixels' (resized RGB)")
    top, wants_rows = request.top_k(), request.needs_probabilities()
    expires_at = time.time() + timeout_s if timeout_s is not None else None
    ids = [submit_classify(p, shape, top, request.model, expires_at, probabilities=wants_rows, version=size.version,
                           pinned=size.pinned, shadow=size.shadow, route=route) for p in pixels]
    wait_s = settings.PREDICT_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + wait_s
    results: list[dict[str, Any]] = []
    for task_id in ids:
        meta = wait_for(task_id, max(0.0, deadline - time.monotonic()))
        if meta["status"] == "SUCCESS":
            results.append(meta["result"])
        elif meta["status"] == "FAILURE":
            raise APIError(500, f"classification failed: {failure_message(meta)}")
        elif meta["status"] == "REVOKED":
            raise APIError(504, f"not computed: {failure_message(meta)}")
        else:
            raise APIError(504, f"not answered within {wait_s:g} s" + (
                " (PREDICT_TIMEOUT_S); the images stay queued and are computed" if timeout_s is None else
                " (the client's deadline); images not started by then are skipped"))
    rows = None
    if wants_rows:
        keys = [PROBABILITIES_PREFIX + i for i in ids]
        with queue_unavailable(), redis_client().pipeline(transaction=False) as pipe:
            pipe.mget(keys)
            pipe.delete(*keys)
            raws, _ = pipe.execute()
        if any(raw is None for raw in raws):
            raise APIError(500, "a probability row expired before it was read")
        rows = np.stack([np.frombuffer(raw, "<f4") for raw in raws])
    version = results[0].get("model_version")
    return InferAnswer(request.model, str(version if version is not None else 1), request.id, rows,
                       [r["predictions"] for r in results])
