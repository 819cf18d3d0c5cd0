"""GET /models, which served model a request asks for (`model=`, default the first of MODELS), and which
version of it (`version=`, else the model's traffic shares) with that version's input.

Served models are names (MODELS): repository models or built-ins. What a model takes
as input (size, resize), which versions are ready and how requests are split over them,
only its workers know: they say it in Redis (imageclf.core.model_records, imageclf.core.readiness), and
this is where the API reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from imageclf.api.errors import APIError
from imageclf.api.quality import recent_drift
from imageclf.api.served import served
from imageclf.api.submissions import queue_unavailable, redis_client
from imageclf.core.model_records import InputLookup, ModelRoutes, ModelUnavailable, read_failures, read_served
from imageclf.core.readiness import live_workers
from imageclf.core.shadow import read_comparisons
from imageclf.core.stats import by_version, read_stats
from imageclf.models.serving_policy import Splitter

bp = Blueprint("models", __name__)

#: What a worker's heartbeat says about the worker itself; the rest describes its served version.
_WORKER_KEYS = ("role", "model", "pid", "backend", "cuda_visible_devices", "served_version", "versions", "rss_mb",
                "rss_mb_two_versions", "batch_size", "batch_size_from", "batch_curve", "unloaded")


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


def model_routes(name: str) -> ModelRoutes:
    """`name`'s ready versions and routing; 503 + Retry-After when no worker can serve it."""
    lookup: InputLookup = current_app.extensions["model_inputs"]
    with queue_unavailable():
        try:
            return lookup.routes_of(name)
        except ModelUnavailable as exc:
            raise APIError(503, str(exc), {"Retry-After": "10"}) from None


@dataclass(frozen=True)
class Route:
    """Where one request goes: the version, what to resize its image to, and whether it is shadowed."""

    height: int
    width: int
    resize: str
    version: int
    pinned: bool
    shadow: int | None = None
    #: What the version computes with (imageclf.core.model_records.ModelInput): a response cache's key.
    revision: str = ""


def requested_version() -> str | None:
    """The `version` query parameter or form field, as sent (None: not given)."""
    version = request.args.get("version")
    if version is None and request.mimetype.startswith("multipart/"):
        version = request.form.get("version")
    return version if version not in (None, "") else None


def parse_version(raw: str | int) -> int:
    """A version number from a client; 400 for anything but a positive integer."""
    text = str(raw).strip()
    if not text.isdigit() or int(text) < 1:
        raise APIError(400, f"'version' must be a version number (1, 2, ...), got {str(raw)[:50]!r}")
    return int(text)


def _splitter(model: str, kind: str) -> Splitter:
    splitters: dict[tuple[str, str], Splitter] = current_app.extensions.setdefault("splitters", {})
    return splitters.setdefault((model, kind), Splitter())


def route(model: str, version: str | int | None, interactive: bool = True, split: bool = True) -> Route:
    """The version for a request: the one it names (404 with the served list when that one is not served),
    else one by the model's traffic shares (the default without `split`: metadata, not a request); an
    interactive request to the default version may get a shadow."""
    routes = model_routes(model)
    if version is not None:
        wanted = parse_version(version)
        size = routes.inputs.get(wanted)
        if size is None:
            raise APIError(404, f"model {model!r} version {wanted} is not served; served versions: "
                                f"{', '.join(map(str, routes.versions()))}")
        return Route(size.height, size.width, size.resize, wanted, True, revision=size.revision)
    routing = routes.routing
    if not split:
        return Route(routes.default.height, routes.default.width, routes.default.resize, routing.default, False,
                     revision=routes.default.revision)
    chosen = _splitter(model, "traffic").pick(routing.shares) if len(routing.shares) > 1 else routing.default
    size = routes.inputs.get(chosen) or routes.default
    shadow = None
    if interactive and chosen == routing.default and routing.shadow is not None \
            and routing.shadow.version in routes.inputs \
            and _splitter(model, "shadow").next_fraction() * 100.0 < routing.shadow.share:
        shadow = routing.shadow.version
    return Route(size.height, size.width, size.resize, size.version or chosen, False, shadow, size.revision)


def describe_models() -> list[dict[str, Any]]:
    """Per served model: default version, each version's state, share and figures, the routing and policy,
    labels, input, preprocessing, workers."""
    client = redis_client()
    workers = live_workers(client)
    last_served = read_served(client, served())
    failures = read_failures(client, served())
    stats = read_stats(client)
    described = []
    for name in served():
        mine = [w for w in workers if w.get("model") == name]
        newest = max(mine, key=lambda w: w.get("served_version") or 0, default=None)
        source = newest or last_served[name] or {}
        info = {k: v for k, v in source.items() if k not in (*_WORKER_KEYS, "version", "inputs")}
        entry: dict[str, Any] = {
            "name": name,
            "served_version": source.get("served_version", source.get("version")),
            "versions": _versions(mine, by_version(stats.get(name, {})), read_comparisons(client, name)),
            **info,
            "workers": [{k: w[k] for k in _WORKER_KEYS if k in w} for w in mine],
        }
        failure = failures[name]
        if failure:
            entry["error"] = failure["error"]
        described.append(entry)
    return described


def _versions(workers: list[dict[str, Any]], stats: dict[str, dict[str, float]],
              comparisons: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each version's state (ready if any worker serves it, failed if any could not load it), share, memory,
    requests served, mean batch size, inference time, and its shadow comparisons."""
    versions: dict[str, dict[str, Any]] = {}
    for worker in workers:
        for version, state in worker.get("versions", {}).items():
            if versions.get(version, {}).get("state") != "ready":
                versions[version] = dict(state)
    for version, fields in stats.items():
        if version not in versions:
            continue
        batches, images = fields.get("batches", 0.0), fields.get("images", 0.0)
        versions[version].update(
            requests=int(fields.get("requests", 0)), images=int(images),
            mean_batch_size=round(images / batches, 2) if batches else None,
            inference_ms_per_batch=round(1000 * fields.get("inference_seconds_sum", 0.0) / batches, 2)
            if batches else None,
            inference_ms_per_image=round(1000 * fields.get("inference_seconds_sum", 0.0) / images, 3)
            if images else None)
    for pair in comparisons:
        if str(pair["version"]) in versions:
            versions[str(pair["version"])].setdefault("shadow", []).append(pair)
    return dict(sorted(versions.items(), key=lambda item: int(item[0])))


@bp.get("/models")
def models() -> ResponseReturnValue:
    with queue_unavailable():
        described = describe_models()
        for entry in described:
            entry["drift"] = recent_drift(entry["name"])
    return jsonify(default=served()[0], models=described)
