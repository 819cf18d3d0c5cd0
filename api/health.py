"""/healthz (the process answers) and /readyz (Redis answers, every served model has a worker, a decoder runs)."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify

from tasks.model_records import read_failures
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
        failures = read_failures(client, current_app.config["MODELS"])
    except redis.RedisError as exc:
        return jsonify(ready=False, reason=f"redis unavailable: {type(exc).__name__}"), 503
    per_model = {name: sum(w.get("model") == name and w.get("role") == "model" for w in workers) for name in failures}
    decoders = sum(w.get("role") == "decoder" for w in workers)
    reasons = [f"model {name!r} cannot be served: {failures[name]['error']}" if failures[name]
               else f"no worker has loaded model {name!r} yet" for name, n in per_model.items() if not n]
    if not decoders:
        reasons.append("no decoder worker is running (jobs would wait)")
    if reasons:
        failed = {name: failure["error"] for name, failure in failures.items() if failure}
        return jsonify(ready=False, reason="; ".join(reasons), models=per_model, decoders=decoders,
                       failed=failed), 503
    return jsonify(ready=True, models=per_model, decoders=decoders)
