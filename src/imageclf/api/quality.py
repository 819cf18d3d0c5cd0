"""Ground truth and what it says: `POST /feedback` (labels on logged answers) and `GET /models/<m>/quality`
(live accuracy and drift per version), over the prediction log (imageclf.core.live_quality)."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue

from imageclf import settings
from imageclf.api.auth import ANONYMOUS
from imageclf.api.errors import APIError
from imageclf.api.json_bodies import parse_json
from imageclf.api.quotas import charge_request
from imageclf.api.served import known_model
from imageclf.api.submissions import redis_client
from imageclf.api.uploads import query_number
from imageclf.core import database
from imageclf.core.live_quality import (
    FeedbackError,
    accuracy_over_time,
    drift,
    label,
    label_studio_entries,
    parse_window,
    quality,
)
from imageclf.core.model_records import read_labels
from imageclf.workers.jobs.store import read_items, read_job

bp = Blueprint("quality", __name__)
DEFAULT_WINDOW = timedelta(hours=24)
#: Labels in one POST /feedback at most.
MAX_FEEDBACK = 10_000


def engine() -> sa.Engine:
    """The database, or 409 when the prediction log is off."""
    if not settings.PREDICTION_LOG or not settings.DATABASE_URL:
        raise APIError(409, "the prediction log is off (PREDICTION_LOG=off, or no DATABASE_URL): there is nothing "
                            "to label or measure")
    with database_unavailable():
        return database.engine()


@contextmanager
def feedback_errors() -> Iterator[None]:
    """Turn what live_quality refuses (FeedbackError: a label, an id, a window) into its 4xx."""
    try:
        yield
    except FeedbackError as exc:
        raise APIError(exc.status, str(exc)) from None


@contextmanager
def database_unavailable() -> Iterator[None]:
    """Turn the database's errors into a 503 that tells the client to retry (as queue_unavailable does Redis')."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise APIError(503, f"the database is unavailable, try again later ({type(exc).__name__})",
                       {"Retry-After": "5"}) from None


@bp.post("/feedback")
def feedback() -> ResponseReturnValue:
    """Label logged answers: a JSON object or list of {"id", "label"} or {"job", "item", "label"}, or a CSV file
    (`id,label`, or `file,label` with a `job` field)."""
    entries, skipped = feedback_entries()
    if not entries:
        raise APIError(400, "send at least one label")
    if len(entries) > MAX_FEEDBACK:
        raise APIError(413, f"{len(entries)} labels in one request; the limit is {MAX_FEEDBACK}")
    charge_request(len(entries))
    owner = None if g.get("owner") in (None, ANONYMOUS) else str(g.owner)
    with feedback_errors(), database_unavailable():
        labelled = label(engine(), entries, owner, lambda model: read_labels(redis_client(), model), _item_of)
    return jsonify(labelled=len(labelled), labels=labelled, **({"skipped": skipped} if skipped else {}))


def feedback_entries() -> tuple[list[dict[str, Any]], int]:
    """The labels a request sends, and how many tasks of a Label Studio export it skipped (no annotation)."""
    upload = request.files.get("file")
    if upload is not None:
        data = upload.read()
        if data.lstrip()[:1] == b"[":  # a Label Studio export, uploaded as a file
            with feedback_errors():
                return label_studio_entries(parse_json(data, "the Label Studio export"))
        return _csv_entries(data, request.form.get("job")), 0
    body = parse_json(request.get_data(), "the feedback")
    if isinstance(body, list) and body and all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in body):
        with feedback_errors():
            return label_studio_entries(body)
    entries = body if isinstance(body, list) else [body]
    if not all(isinstance(entry, dict) for entry in entries):
        raise APIError(400, "send {\"id\": ..., \"label\": ...}, a list of them, a CSV file or a Label Studio export")
    return entries, 0


def _csv_entries(data: bytes, job: str | None) -> list[dict[str, Any]]:
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise APIError(400, f"the CSV cannot be read: {exc}") from None
    if rows and "id" in rows[0] and "label" in rows[0]:
        return [{"id": row["id"], "label": row["label"]} for row in rows]
    if rows and "file" in rows[0] and "label" in rows[0]:
        if not job:
            raise APIError(400, "a file,label CSV names a job's images: send the job's id in the 'job' field")
        return [{"job": job, "item": row["file"], "label": row["label"]} for row in rows]
    raise APIError(400, "the CSV needs a header line 'id,label' (or 'file,label' with a 'job' field)")


def _item_of(job: str, name: str) -> int | None:
    """The index of the job's image named `name` (its name in the job, or that name's last part): from its result
    once it ended, else from its listing."""
    found = read_job(redis_client(), job)
    if found is None:
        raise FeedbackError(404, f"job {job!r} is unknown or expired: name its images by index")
    try:
        names = ([str(item.get("name", "")) for item in found["result"].get("items", [])] if "result" in found
                 else [str(item.get("name", "")) for item in read_items(job)])
    except (OSError, ValueError, AttributeError):
        raise FeedbackError(404, f"the listing of job {job!r} is gone: name its images by index") from None
    for index, listed in enumerate(names):
        if name in (listed, listed.rsplit("/", 1)[-1]):
            return index
    return None


#: Seconds GET /models reuses a model's drift verdicts (each is a few queries over the log).
DRIFT_EVERY_S = 30.0
_drift_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
_drift_lock = threading.Lock()


def recent_drift(model: str) -> dict[str, Any] | None:
    """Each version's drift verdict over the last 24 hours and its signals' PSI, for GET /models (None: the log
    is off, the database away, or the model's classes unknown)."""
    if not settings.PREDICTION_LOG or not settings.DATABASE_URL:
        return None
    with _drift_lock:
        at, verdicts = _drift_cache.get(model, (0.0, None))
        if time.monotonic() - at < DRIFT_EVERY_S:
            return verdicts
        labels = read_labels(redis_client(), model)
        try:
            report = drift(database.engine(), model, len(labels), DEFAULT_WINDOW) if labels else None
        except (sa.exc.SQLAlchemyError, RuntimeError):
            report = None
        verdicts = None if report is None else {
            version: {"drifted": r["drifted"], "window_answers": r["window_answers"],
                      "psi": {name: s["psi"] for name, s in r["signals"].items()}} for version, r in report.items()}
        _drift_cache[model] = (time.monotonic(), verdicts)
        return verdicts


@bp.get("/models/<model>/quality")
def model_quality(model: str) -> ResponseReturnValue:
    """Per version: labelled count, accuracy, top-5, per-class precision/recall/F1, confusion matrix and ECE
    (`window`, default 24h, or the `last` N labelled), and drift against each version's reference."""
    labels = read_labels(redis_client(), model)
    if model not in settings.MODELS and labels is None:
        raise APIError(404, f"unknown model {model!r}")
    with feedback_errors():
        window, last = parse_window(request.args.get("window"), request.args.get("last"))
    if labels is None:
        raise APIError(503, f"the classes of {model!r} are not known yet (no worker has loaded it)",
                       {"Retry-After": "5"})
    db = engine()
    with database_unavailable():
        figures = quality(db, model, labels, window, last)
        drifted = drift(db, model, len(labels), window or DEFAULT_WINDOW)
    return jsonify(model=model, window=request.args.get("window") or (None if last else "24h"), last=last,
                   versions=figures, drift=drifted)


@bp.get("/models/<model>/quality/history")
def quality_history(model: str) -> ResponseReturnValue:
    """Per version, the live accuracy of each of `buckets` periods (default 24) of `window` (default 24h)."""
    known_model(model)
    with feedback_errors():
        window, _ = parse_window(request.args.get("window"), None)
    buckets = int(query_number("buckets", 24, 1, 1000, integer=True))
    with database_unavailable():
        series = accuracy_over_time(engine(), model, window or DEFAULT_WINDOW, buckets)
    return jsonify(model=model, window=request.args.get("window") or "24h", buckets=buckets, versions=series)
