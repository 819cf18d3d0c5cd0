"""/healthz (the process answers) and /readyz (Redis answers, a worker serves our model, a decoder runs jobs)."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify

from tasks.readiness import live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    model = current_app.config["MODEL_SPEC"].name
    client: redis.Redis = current_app.extensions["redis"]
    try:
        client.ping()
        workers = live_workers(client)
    except redis.RedisError as exc:
        return jsonify(ready=False, reason=f"redis unavailable: {type(exc).__name__}"), 503
    serving = [w for w in workers if w.get("model") == model]
    decoders = [w for w in workers if w.get("role") == "decoder"]
    if not serving:
        return jsonify(ready=False, reason=f"no worker has loaded model {model!r} yet", workers=workers), 503
    if not decoders:
        return jsonify(ready=False, reason="no decoder worker is running (jobs would wait)", workers=workers), 503
    return jsonify(ready=True, model=model, workers=serving, decoders=len(decoders))
