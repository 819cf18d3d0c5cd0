"""GET /models, which served model a request asks for (`model=`, default the first of MODELS), and its input.

Served models are names (MODELS): repository models or built-ins. What a model takes
as input (size, resize) and which versions it has, only its workers know: they say it
in Redis (tasks.model_records, tasks.readiness), and this is where the API reads it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from api.errors import APIError
from api.submissions import queue_unavailable, redis_client
from tasks.model_records import InputLookup, ModelInput, ModelUnavailable, read_failures, read_served
from tasks.readiness import live_workers

bp = Blueprint("models", __name__)

#: What a worker's heartbeat says about the worker itself; the rest describes its served version.
_WORKER_KEYS = ("role", "model", "pid", "backend", "cuda_visible_devices", "served_version", "versions", "rss_mb",
                "rss_mb_two_versions", "batch_size", "batch_size_from", "batch_curve")


def served() -> list[str]:
    """The served models' names, the default first."""
    return current_app.config["MODELS"]


def requested_model() -> str:
    """The model named by the `model` query parameter (or form field), or the default; 400 if not served."""
    names = served()
    name = request.args.get("model") or (request.form.get("model") if request.mimetype.startswith("multipart/")
                                         else None)
    if not name:
        return names[0]
    if name not in names:
        raise APIError(400, f"unknown model {name!r}; this service serves: {', '.join(names)}")
    return name


def model_input(name: str) -> ModelInput:
    """What to resize uploads to for `name` now; 503 + Retry-After when no worker can serve it."""
    lookup: InputLookup = current_app.extensions["model_inputs"]
    with queue_unavailable():
        try:
            return lookup.input_of(name)
        except ModelUnavailable as exc:
            raise APIError(503, str(exc), {"Retry-After": "10"}) from None


def describe_models() -> list[dict[str, Any]]:
    """Per served model: served version, versions with their states, labels, input, preprocessing, workers."""
    client = redis_client()
    workers = live_workers(client)
    last_served = read_served(client, served())
    failures = read_failures(client, served())
    described = []
    for name in served():
        mine = [w for w in workers if w.get("model") == name]
        versions: dict[str, dict[str, Any]] = {}
        for worker in mine:  # a version counts as ready if any worker serves it, failed if any could not load it
            for version, state in worker.get("versions", {}).items():
                if versions.get(version, {}).get("state") != "ready":
                    versions[version] = state
        newest = max(mine, key=lambda w: w.get("served_version") or 0, default=None)
        source = newest or last_served[name] or {}
        info = {k: v for k, v in source.items() if k not in (*_WORKER_KEYS, "version")}
        entry: dict[str, Any] = {
            "name": name,
            "served_version": source.get("served_version", source.get("version")),
            "versions": versions,
            **info,
            "workers": [{k: w[k] for k in _WORKER_KEYS if k in w} for w in mine],
        }
        if failures[name]:
            entry["error"] = failures[name]["error"]
        described.append(entry)
    return described


@bp.get("/models")
def models():
    with queue_unavailable():
        return jsonify(default=served()[0], models=describe_models())
