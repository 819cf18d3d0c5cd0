"""The Open Inference Protocol (KServe v2) over HTTP, on the API's port, so Triton's clients work unchanged.

Health, server and model metadata, model readiness, Triton's model configuration (which
perf_analyzer reads) and inference. Inference goes through /predict's queue (imageclf.api.v2_inference).
Errors are the protocol's `{"error": "..."}`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from imageclf.api.errors import APIError
from imageclf.api.inference_protocol import EXTENSIONS, encode_http, parse_http
from imageclf.api.quotas import charge_request
from imageclf.api.served import served
from imageclf.api.submissions import queue_unavailable, redis_client
from imageclf.api.v2_inference import described, known_model, model_versions, run, served_input
from imageclf.core.readiness import live_workers

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "imageclf"


def _installed_version() -> str:
    """The version of the installed package (imageclf/__init__.py's, at install time; `make install` installs
    it), read from its metadata so that the API depends on nothing above it."""
    try:
        return version("imageclf")
    except PackageNotFoundError:  # a checkout run without installing it
        return "0+unknown"


SERVER_VERSION = _installed_version()
HEADER_LENGTH = "Inference-Header-Content-Length"


@bp.errorhandler(APIError)
def _error(exc: APIError) -> ResponseReturnValue:
    response = jsonify(error=exc.message)
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def model_metadata(model: str, version: str | None) -> dict[str, Any]:
    """Names, datatypes and shapes of the model's inputs and output (-1: any number of images)."""
    size = served_input(model, version, split=False)
    with queue_unavailable():
        entry = described(model)
    classes = entry.get("labels")
    return {
        "name": model,
        "versions": model_versions(entry),
        "platform": SERVER_NAME,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                   {"name": "pixels", "datatype": "UINT8", "shape": [-1, size.height, size.width, 3]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes or -1]}],
    }


def model_config(model: str, version: str | None) -> dict[str, Any]:
    """Triton's model configuration form of the metadata: both inputs optional (send one), no batch dimension
    of its own (max_batch_size 0: the N of a request is in its shape; batching happens in the queue)."""
    meta = model_metadata(model, version)
    types = {"BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32"}
    return {
        "name": model,
        "platform": SERVER_NAME,
        "max_batch_size": 0,
        "input": [{"name": t["name"], "data_type": types[t["datatype"]], "dims": t["shape"], "optional": True}
                  for t in meta["inputs"]],
        "output": [{"name": t["name"], "data_type": types[t["datatype"]], "dims": t["shape"]} for t in meta["outputs"]],
    }


def server_ready() -> tuple[bool, str]:
    """Ready when Redis answers and every served model has a live worker."""
    try:
        models = {w.get("model") for w in live_workers(redis_client())}
    except redis.RedisError as exc:
        return False, f"redis unavailable: {type(exc).__name__}"
    missing = [name for name in served() if name not in models]
    return (False, f"no worker serves {', '.join(missing)} yet") if missing else (True, "")


def model_ready(model: str, version: str | None) -> bool:
    """Whether a live worker serves `model` (at `version`, when given); 404 for a model not served at all."""
    known_model(model)
    with queue_unavailable():
        workers = [w for w in live_workers(redis_client()) if w.get("model") == model]
    return any(w.get("served_version") is not None if version is None else
               (w.get("versions") or {}).get(version, {}).get("state") == "ready" for w in workers)


@bp.get("/health/live")
def live() -> ResponseReturnValue:
    return jsonify(live=True)


@bp.get("/health/ready")
def ready() -> ResponseReturnValue:
    ok, reason = server_ready()  # the protocol: 200 means ready, a 4xx means not
    return (jsonify(ready=True), 200) if ok else (jsonify(ready=False, error=reason), 400)


@bp.get("")
def metadata() -> ResponseReturnValue:
    return jsonify(server_metadata())


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def model_meta(model: str, version: str | None = None) -> ResponseReturnValue:
    return jsonify(model_metadata(model, version))


@bp.get("/models/<model>/config")
@bp.get("/models/<model>/versions/<version>/config")
def config(model: str, version: str | None = None) -> ResponseReturnValue:
    return jsonify(model_config(model, version))


@bp.get("/models/<model>/ready")
@bp.get("/models/<model>/versions/<version>/ready")
def model_ready_view(model: str, version: str | None = None) -> ResponseReturnValue:
    ok = model_ready(model, version)
    return (jsonify(name=model, ready=True), 200) if ok else (jsonify(name=model, ready=False), 400)


@bp.post("/models/<model>/infer")
@bp.post("/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> ResponseReturnValue:
    raw_length = request.headers.get(HEADER_LENGTH)
    body = request.get_data(cache=False)
    try:
        header_length = int(raw_length) if raw_length is not None else None
    except ValueError:
        raise APIError(400, f"{HEADER_LENGTH} must be a number of bytes, got {raw_length!r}") from None
    if header_length is not None and not 0 < header_length <= len(body):
        raise APIError(400, f"{HEADER_LENGTH} is {header_length}; the body has {len(body)} bytes")
    size = served_input(model, version)
    parsed = parse_http(body, header_length, model, version, (size.height, size.width))
    charge_request(parsed.count)
    payload, json_length = encode_http(parsed, run(parsed, size))
    if json_length is None:
        return Response(payload, mimetype="application/json")
    response = Response(payload, mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(json_length)
    return response
