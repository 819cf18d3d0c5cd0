"""POST /predict: one image, answered synchronously (or 202 + result URL after the timeout).

`?version=N` (or the form field `version`) asks for that version of the model; without it
the model's traffic shares pick one (api.models.route).
"""

from __future__ import annotations

import time

from flask import Blueprint, g, jsonify, url_for

import settings
from api.errors import APIError
from api.models import requested_model, requested_version, route
from api.submissions import prediction_body, submit_classify, wait_for
from api.uploads import image_pixels, query_number
from tasks.result_store import failure_message

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict():
    received = time.time()
    top = int(query_number("top", default=5, low=1, high=1000, integer=True))
    timeout = query_number("timeout", default=settings.PREDICT_TIMEOUT_S, low=0, high=settings.MAX_PREDICT_TIMEOUT_S)
    deadline = query_number("deadline", default=0, low=0, high=settings.RESULT_TTL_S)
    model = g.model = requested_model()
    size = route(model, requested_version())
    g.model_version = size.version
    pixels = image_pixels("image", (size.height, size.width), size.resize)
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
        return jsonify(body)
    if meta["status"] == "FAILURE":
        raise APIError(500, f"classification failed: {failure_message(meta)}")
    if meta["status"] == "REVOKED":
        raise APIError(504, f"not computed: {failure_message(meta)}")
    result_url = url_for("results.result", task_id=task_id)
    response = jsonify(success=False, id=task_id, status=meta["status"], result_url=result_url)
    response.status_code = 202
    response.headers["Location"] = result_url
    return response
