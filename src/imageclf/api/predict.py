"""POST /predict: one image, answered synchronously (or 202 + result URL after the timeout).

`?version=N` (or the form field `version`) asks for that version of the model; without it
the model's traffic shares pick one (imageclf.api.models.route). With CACHE_TTL_S set, the same upload
to the same version is answered from the cache (imageclf.api.response_cache) unless `?cache=false`.
"""

from __future__ import annotations

import time

from flask import Blueprint, g, jsonify, url_for
from flask.typing import ResponseReturnValue

from imageclf import settings
from imageclf.api.callbacks import requested_callback
from imageclf.api.errors import APIError
from imageclf.api.metrics import CACHE_REQUESTS
from imageclf.api.models import requested_model, requested_version, route
from imageclf.api.quotas import charge_request
from imageclf.api.response_cache import cache_key, lookup, store
from imageclf.api.submissions import queue_unavailable, redis_client, submit_classify, wait_for
from imageclf.api.uploads import decode_upload, flag, query_number, uploaded
from imageclf.core.result_store import failure_message
from imageclf.workers.jobs.result_bodies import prediction_body
from imageclf.workers.jobs.webhooks import schedule

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> ResponseReturnValue:
    received = time.time()
    top = int(query_number("top", default=5, low=1, high=1000, integer=True))
    timeout = query_number("timeout", default=settings.PREDICT_TIMEOUT_S, low=0, high=settings.MAX_PREDICT_TIMEOUT_S)
    deadline = query_number("deadline", default=0, low=0, high=settings.RESULT_TTL_S)
    charge_request(1)  # first: a refused request costs no parsing of its body
    model = g.model = requested_model()
    size = route(model, requested_version())
    g.model_version = size.version
    callback = requested_callback()
    data, name = uploaded("image")
    key = cache_key(data, model, size, top) if flag("cache", default=True) else None
    if key is not None:
        with queue_unavailable():
            hit = lookup(redis_client(), key)
        CACHE_REQUESTS.labels(model, "hit" if hit else "miss").inc()
        if hit:
            return jsonify(success=True, id=None, cached=True, **hit,
                           timings={"total_ms": round((time.time() - received) * 1000, 2)})
    pixels = decode_upload(data, name, (size.height, size.width), size.resize)
    decoded = time.time()
    task_id = g.task_id = submit_classify(pixels, (size.height, size.width), top, model,
                                          received + deadline if deadline else None,
                                          version=size.version, pinned=size.pinned, shadow=size.shadow)

    meta = wait_for(task_id, timeout)
    if meta["status"] == "SUCCESS":
        seen = time.time()
        body = prediction_body(task_id, meta["result"])
        g.model_version = body["model_version"]
        body["timings"].update(
            decode_ms=round((decoded - received) * 1000, 2),
            result_ms=round((seen - meta["result"]["done_at"]) * 1000, 2),
            total_ms=round((seen - received) * 1000, 2),
        )
        if key is not None:
            with queue_unavailable():
                store(redis_client(), key, body, size)
            body["cached"] = False
        return jsonify(body)
    if meta["status"] == "FAILURE":
        raise APIError(500, f"classification failed: {failure_message(meta)}")
    if meta["status"] == "REVOKED":
        raise APIError(504, f"not computed: {failure_message(meta)}")
    if callback:  # the answer comes later: say when it does
        with queue_unavailable():
            schedule(redis_client(), task_id, "request", callback)
    result_url = url_for("results.result", task_id=task_id)
    response = jsonify(success=False, id=task_id, status=meta["status"], result_url=result_url)
    response.status_code = 202
    response.headers["Location"] = result_url
    return response
