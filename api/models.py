"""GET /models, and which served model a request asks for (`model=`, default the first of MODELS)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from api.errors import APIError
from api.submissions import queue_unavailable, redis_client
from models.registry import ModelSpec
from tasks.readiness import live_workers

bp = Blueprint("models", __name__)


def served() -> dict[str, ModelSpec]:
    """The served models by name, the default first."""
    return current_app.config["MODEL_SPECS"]


def requested_model() -> ModelSpec:
    """The model named by the `model` query parameter (or form field), or the default; 400 if not served."""
    specs = served()
    name = request.args.get("model") or (request.form.get("model") if request.mimetype.startswith("multipart/")
                                         else None)
    if not name:
        return next(iter(specs.values()))
    if name not in specs:
        raise APIError(400, f"unknown model {name!r}; this service serves: {', '.join(specs)}")
    return specs[name]


@bp.get("/models")
def models():
    with queue_unavailable():
        workers = live_workers(redis_client())
    return jsonify(default=next(iter(served())), models=[
        {"name": spec.name, "input_size": spec.input_size,
         "workers": [w for w in workers if w.get("model") == spec.name]}
        for spec in served().values()
    ])
