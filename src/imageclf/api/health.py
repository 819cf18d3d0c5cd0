"""/healthz (the process answers) and /readyz (Redis answers, every served model has a worker, a decoder runs)."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from imageclf.core.model_records import read_failures
from imageclf.core.readiness import live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    ready, body = readiness()
    return jsonify(body), 200 if ready else 503


def readiness() -> tuple[bool, dict[str, Any]]:
    """Whether the service can answer now (Redis answers, every served model has a live worker, a decoder runs),
    and why not; read by /readyz and by the gRPC health service."""
    client: redis.Redis = current_app.extensions["redis"]
    try:
        client.ping()
        workers = live_workers(client)
        failures = read_failures(client, current_app.config["MODELS"])
    except redis.RedisError as exc:
        return False, {"ready": False, "reason": f"redis unavailable: {type(exc).__name__}"}
    per_model = {name: sum(w.get("model") == name and w.get("role") == "model" for w in workers) for name in failures}
    decoders = sum(w.get("role") == "decoder" for w in workers)
    reasons = [f"model {name!r} cannot be served: {failure['error']}" if (failure := failures[name])
               else f"no worker has loaded model {name!r} yet" for name, n in per_model.items() if not n]
    if not decoders:
        reasons.append("no decoder worker is running (jobs would wait)")
    if reasons:
        failed = {name: failure["error"] for name, failure in failures.items() if failure}
        return False, {"ready": False, "reason": "; ".join(reasons), "models": per_model, "decoders": decoders,
                       "failed": failed}
    return True, {"ready": True, "models": per_model, "decoders": decoders}
