"""/healthz (the process answers) and /readyz (Redis answers, every served model has a worker, a decoder runs)."""

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
    client: redis.Redis = current_app.extensions["redis"]
    try:
        client.ping()
        workers = live_workers(client)
    except redis.RedisError as exc:
        return jsonify(ready=False, reason=f"redis unavailable: {type(exc).__name__}"), 503
    served = current_app.config["MODEL_SPECS"]
    per_model = {name: sum(w.get("model") == name for w in workers) for name in served}
    decoders = sum(w.get("role") == "decoder" for w in workers)
    reasons = [f"no worker has loaded model {name!r} yet" for name, n in per_model.items() if not n]
    if not decoders:
        reasons.append("no decoder worker is running (jobs would wait)")
    if reasons:
        return jsonify(ready=False, reason="; ".join(reasons), models=per_model, decoders=decoders), 503
    return jsonify(ready=True, models=per_model, decoders=decoders)
