"""The control API for operators, behind ADMIN_API_KEYS: the repository, serving policies, new versions.

    POST /v2/repository/index                  every model's versions and their states (the OIP repository
                                               extension; each entry also carries GET /models' figures)
    POST /v2/repository/models/<m>/load        serve the model again after an unload
    POST /v2/repository/models/<m>/unload      its workers drop every version; requests get 503 meanwhile
    PUT  /models/<m>/policy                    change version_policy, traffic, shadow, review and promotion
                                               (config.json)
    POST /models/<m>/promotion/<action>        pause, resume or abort the candidate's rollout
    POST /models/<m>/versions                  upload a new version (imageclf.launch.add_model's checks)

Files stay the source of truth: a policy is written to the model's config.json (atomically,
under a lock), and the model's workers apply it within MODEL_POLL_S as they apply an edit by
hand. A new version is checked by `imageclf.launch.add_model` in a child process (it loads the model
with TensorFlow, which this process never imports). Every change is logged with who made it
(the id of the admin key, never the key).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from imageclf import settings
from imageclf.api.auth import admin_key
from imageclf.api.errors import APIError
from imageclf.api.json_bodies import parse_json
from imageclf.api.metrics import line_log
from imageclf.api.models import describe_models
from imageclf.api.served import known_model
from imageclf.api.submissions import queue_unavailable, redis_client
from imageclf.core.model_records import InputLookup, ModelUnavailable, clear_unloaded, record_unloaded
from imageclf.core.promotion import ACTIONS, request_action
from imageclf.models.promotion_plan import parse_promotion
from imageclf.models.repository import (
    POLICY_KEYS,
    RepositoryError,
    locked,
    model_dir,
    read_raw_config,
    versions,
    write_config,
)
from imageclf.models.review_rules import parse_review
from imageclf.models.serving_policy import check_against, parse_policy

bp = Blueprint("admin", __name__)
#: Every change, as one JSON line on stderr like the request log.
changes = line_log(logging.getLogger("imageclf.admin"))

#: How long load and unload wait for the model's workers to report the change before answering 202.
WAIT_S = 60.0
#: How long `imageclf.launch.add_model` may take to check an uploaded version.
ADD_MODEL_TIMEOUT_S = 600
_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")
#: OIP / Triton repository states of this service's version states.
_STATES = {"ready": "READY", "loading": "LOADING", "draining": "UNLOADING", "failed": "UNAVAILABLE",
           "available": "UNAVAILABLE", "unloaded": "UNAVAILABLE"}


@bp.before_request
def _admin_only() -> None:
    """403 while ADMIN_API_KEYS is unset or for any other key (plain API_KEYS included); `g.admin` names the key."""
    g.admin = admin_key("the control API")


def _log(model: str, action: str, **details: Any) -> None:
    changes.info(json.dumps({"event": "control", "model": model, "action": action, "by": g.admin, **details}))


def _folder(model: str) -> Path:
    """The model's repository folder as this process sees it; 409 when it has none here."""
    known_model(model)
    folder = model_dir(settings.MODEL_REPOSITORY, model)
    if folder is None:
        raise APIError(409, f"model {model!r} has no folder in MODEL_REPOSITORY ({settings.MODEL_REPOSITORY}) on the "
                            "API's host: built-in models have one version, and the API must see the repository to "
                            "change it")
    return folder


@bp.post("/v2/repository/index")
def repository_index() -> ResponseReturnValue:
    body = parse_json(request.get_data(), "the request body") if request.content_length else {}
    ready_only = body.get("ready", False) if isinstance(body, dict) else None
    if not isinstance(ready_only, bool):
        raise APIError(400, "send an empty body or a JSON object such as {\"ready\": true}")
    with queue_unavailable():
        models = describe_models()
    index = []
    for entry in models:
        for version, state in entry["versions"].items():
            oip = _STATES.get(state.get("state", ""), "UNAVAILABLE")
            if ready_only and oip != "READY":
                continue
            index.append({"name": entry["name"], "version": version, "state": oip,
                          "reason": state.get("error") or state.get("reason") or "", "details": state})
    return jsonify(index)


@bp.post("/v2/repository/models/<model>/unload")
def unload(model: str) -> ResponseReturnValue:
    known_model(model)
    with queue_unavailable():
        record_unloaded(redis_client(), model, g.admin)
    _log(model, "unload")
    done = _wait(lambda: _unavailable(model))
    return jsonify(name=model, state="UNAVAILABLE" if done else "UNLOADING"), 200 if done else 202


@bp.post("/v2/repository/models/<model>/load")
def load(model: str) -> ResponseReturnValue:
    known_model(model)
    with queue_unavailable():
        was_unloaded = clear_unloaded(redis_client(), model)
    _log(model, "load", was_unloaded=was_unloaded)
    done = _wait(lambda: not _unavailable(model))
    return jsonify(name=model, state="READY" if done else "LOADING"), 200 if done else 202


def _unavailable(model: str) -> bool:
    """Whether the model's workers announce no ready version (read fresh, not through the API's cache)."""
    try:
        InputLookup(redis_client()).routes_of(model)
    except ModelUnavailable:
        return True
    return False


def _wait(done: Callable[[], bool]) -> bool:
    """Poll `done` until it holds (True) or the wait for the model's workers runs out (False)."""
    deadline = time.monotonic() + min(WAIT_S, 2 * settings.MODEL_POLL_S + 30)
    with queue_unavailable():
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    return True


@bp.put("/models/<model>/policy")
def put_policy(model: str) -> ResponseReturnValue:
    """Merge the body's version_policy, traffic and shadow (null removes one) into config.json, after checking
    them against the versions on disk; 400 leaves the current policy as it is."""
    folder = _folder(model)
    body = parse_json(request.get_data(), "the policy")
    if not isinstance(body, dict) or not body:
        raise APIError(400, f"send a JSON object with any of {', '.join(POLICY_KEYS)}")
    unknown = sorted(set(body) - set(POLICY_KEYS))
    if unknown:
        raise APIError(400, f"unknown key(s) {', '.join(map(repr, unknown))}; a policy has {', '.join(POLICY_KEYS)}")
    with locked(folder):
        try:
            raw = read_raw_config(folder)
            for key, value in body.items():
                if value is None:
                    raw.pop(key, None)
                else:
                    raw[key] = value
            policy = parse_policy(raw, Path("the policy"))
            check_against(policy, versions(folder), Path("the policy"))
            parse_review(raw.get("review"), Path("the policy"))
            plan = parse_promotion(raw.get("promotion"), Path("the policy"))
            serving = policy.select(versions(folder))
            if plan is not None and plan.candidate not in serving:
                raise RepositoryError(f"the policy: the promotion's candidate {plan.candidate} is not served "
                                      f"(served: {', '.join(map(str, serving))})")
        except RepositoryError as exc:
            raise APIError(400, f"{exc}; the current policy stays") from None
        write_config(folder, raw)
    _log(model, "policy", **policy.describe())
    return jsonify(name=model, policy=policy.describe(), applied_within_s=settings.MODEL_POLL_S, by=g.admin)


@bp.post("/models/<model>/promotion/<action>")
def promotion_action(model: str, action: str) -> ResponseReturnValue:
    """Pause, resume or abort the rollout (applied by the controller's next check, imageclf.core.promotion)."""
    known_model(model)
    if action not in ACTIONS:
        raise APIError(404, f"no promotion action {action[:40]!r}; one of {', '.join(ACTIONS)}")
    with queue_unavailable():
        request_action(redis_client(), model, action, g.admin)
    _log(model, f"promotion {action}")
    return jsonify(name=model, requested=action, applied_within_s=settings.PROMOTION_CHECK_S, by=g.admin), 202


@bp.post("/models/<model>/reference")
def reset_reference(model: str) -> ResponseReturnValue:
    """Start the drift reference of every version of `model` again: its answers from now on."""
    from imageclf.api.quality import database_unavailable, engine
    from imageclf.core.live_quality import reset_reference as reset

    with database_unavailable():
        versions = reset(engine(), model)
    if not versions:
        raise APIError(404, f"no logged answers of model {model!r}")
    _log(model, "drift reference reset", versions=versions)
    return jsonify(name=model, versions=versions, by=g.admin)


@bp.post("/models/<model>/versions")
def add_version(model: str) -> ResponseReturnValue:
    """Upload a model file as the next version (with an optional `sample` image to check it on)."""
    folder = _folder(model)
    upload = request.files.get("model")
    if upload is None or not upload.filename:
        raise APIError(400, "send the model file as the multipart field 'model' (.keras, .h5 or .onnx) and, "
                            "optionally, an image as 'sample'")
    suffix = Path(upload.filename).suffix.lower()
    if suffix not in _MODEL_SUFFIXES:
        raise APIError(400, f"{upload.filename[:100]!r}: not a model file this service loads from an upload "
                            f"({', '.join(_MODEL_SUFFIXES)}); add a SavedModel with `imageclf add-model`")
    with tempfile.TemporaryDirectory(prefix="imageclf-upload-") as staging:
        source = Path(staging) / f"model{suffix}"
        upload.save(source)
        command = [sys.executable, "-m", "imageclf", "add-model", str(source), "--name", model,
                   "--repository", settings.MODEL_REPOSITORY]
        sample = request.files.get("sample")
        if sample is not None and sample.filename:
            sample.save(Path(staging) / "sample")
            command += ["--sample", str(Path(staging) / "sample")]
        with locked(folder):
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=ADD_MODEL_TIMEOUT_S,
                                      cwd=Path(current_app.root_path).parent)
            except subprocess.TimeoutExpired:
                raise APIError(400, f"checking the model took more than {ADD_MODEL_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        message = (lines[-1][len("error: "):] if lines else (done.stderr.strip().splitlines() or ["failed"])[-1])
        raise APIError(400, message.replace(str(source), upload.filename[:100]))
    added = re.search(r"^added \S+ version (\d+)", done.stdout, re.MULTILINE)
    version = int(added.group(1)) if added else max(versions(folder), default=0)
    _log(model, "new version", version=version, file=upload.filename[:100])
    return jsonify(name=model, version=version, output=done.stdout.strip().splitlines(), by=g.admin), 201
