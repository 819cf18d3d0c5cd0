"""The review queue for labellers: list the kept images, label one, export them for training or for Label Studio,
import labels back (imageclf.core.review_queue keeps them; labels are feedback, imageclf.core.live_quality).

    GET  /review?model=m&reason=r&labelled=false   the queue, newest first, with thumbnails
    GET  /review/<id>/image?size=128               a kept image (PNG; `size`: a thumbnail's longer side)
    POST /review/<id>                              {"label": ...}: labels the image (every version's answer)
    GET  /review/export?format=imagefolder|csv|labelstudio&model=m    a zip
    POST /review/import                            a Label Studio export (JSON) or a CSV `id,label`

The queue holds every client's images, so it takes an admin key (ADMIN_API_KEYS); a service without any key is
open to all, as its other routes are.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from typing import Any
from xml.sax.saxutils import quoteattr

from flask import Blueprint, current_app, g, jsonify, request, send_file
from flask.typing import ResponseReturnValue
from PIL import Image

from imageclf import settings
from imageclf.api.auth import admin_key
from imageclf.api.errors import APIError
from imageclf.api.json_bodies import parse_json
from imageclf.api.quality import MAX_FEEDBACK, database_unavailable, engine, feedback_entries, feedback_errors
from imageclf.api.served import known_model, served
from imageclf.api.submissions import redis_client
from imageclf.api.uploads import query_number
from imageclf.core import review_queue
from imageclf.core.live_quality import label
from imageclf.core.model_records import read_labels
from imageclf.models.review_rules import REASONS

bp = Blueprint("review", __name__)
FORMATS = ("imagefolder", "csv", "labelstudio")


@bp.before_request
def _reviewers_only() -> None:
    if not settings.ADMIN_API_KEYS and not current_app.extensions["keyring"].enabled:
        g.reviewer = "anyone (no API keys)"
        return
    g.reviewer = admin_key("the review queue")


def _labels(model: str) -> list[str]:
    labels = read_labels(redis_client(), model)
    if labels is None:
        raise APIError(503, f"the classes of {model!r} are not known yet (no worker has loaded it)",
                       {"Retry-After": "5"})
    return labels


def _filters() -> tuple[str | None, str | None, bool | None]:
    model, reason = request.args.get("model") or None, request.args.get("reason") or None
    if model is not None:
        known_model(model)
    if reason is not None and reason not in REASONS:
        raise APIError(400, f"'reason' must be one of {', '.join(REASONS)}, got {reason[:40]!r}")
    labelled = request.args.get("labelled", "false").lower()
    if labelled not in ("true", "false", "all"):
        raise APIError(400, f"'labelled' must be true, false or all, got {labelled[:20]!r}")
    return model, reason, None if labelled == "all" else labelled == "true"


def _entry(row: dict[str, Any], labels_of: dict[str, list[str]]) -> dict[str, Any]:
    labels = labels_of.setdefault(row["model"], read_labels(redis_client(), row["model"]) or [])

    def name(class_id: int | None) -> str | None:
        return labels[class_id] if class_id is not None and 0 <= class_id < len(labels) else None

    return {"id": row["request_id"], "model": row["model"], "version": row["version"],
            "at": review_queue.utc(row["at"]), "route": row["route"], "reasons": row["review"],
            "confidence": round(float(row["confidence"]), 6),
            "predictions": [{"class_id": c, "label": name(c), "probability": round(float(p), 6)}
                            for c, p in zip(row["top_ids"], row["top_probs"])],
            "label": name(row["label"]), "class_id": row["label"],
            "image": f"/review/{row['request_id']}/image", "thumbnail": f"/review/{row['request_id']}/image?size=160"}


@bp.get("/review")
def queue() -> ResponseReturnValue:
    model, reason, labelled = _filters()
    limit = int(query_number("limit", 100, 1, 1000, integer=True))
    offset = int(query_number("offset", 0, 0, 10**9, integer=True))
    db = engine()
    with database_unavailable():
        rows = review_queue.listed(db, model, reason, labelled, limit, offset)
        counts = review_queue.counts(db, model)
    labels_of: dict[str, list[str]] = {}
    classes = _labels(model) if model else None  # for a labeller's search box
    return jsonify(items=[_entry(row, labels_of) for row in rows], counts=counts, reasons=list(REASONS),
                   classes=classes, limit=limit, offset=offset)


def _kept(request_id: str) -> dict[str, Any]:
    with database_unavailable():
        row = review_queue.one(engine(), request_id)
    if row is None:
        raise APIError(404, f"no kept image {request_id[:200]!r} in the review queue")
    return row


@bp.get("/review/<path:request_id>/image")
def image(request_id: str) -> ResponseReturnValue:
    row = _kept(request_id)
    size = query_number("size", 0, 0, 4096, integer=True)
    try:
        data = review_queue.read_image(row["review_file"])
    except OSError:
        raise APIError(404, f"the kept image of {request_id[:200]!r} is gone from REVIEW_DIR") from None
    if size:
        thumbnail = Image.open(io.BytesIO(data))
        thumbnail.thumbnail((int(size), int(size)))
        buffer = io.BytesIO()
        thumbnail.save(buffer, "PNG")
        data = buffer.getvalue()
    response = send_file(io.BytesIO(data), mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.post("/review/<path:request_id>")
def label_one(request_id: str) -> ResponseReturnValue:
    row = _kept(request_id)
    body = parse_json(request.get_data(), "the label")
    if not isinstance(body, dict) or "label" not in body:
        raise APIError(400, "send {\"label\": <class name or id>}")
    return jsonify(_label([{"id": request_id, "label": body["label"]}])[0] | {"model": row["model"]})


@bp.post("/review/import")
def import_labels() -> ResponseReturnValue:
    """Labels from a Label Studio export (JSON) or a CSV (`id,label`), through feedback, for any client's image."""
    entries, skipped = feedback_entries()
    if len(entries) > MAX_FEEDBACK:
        raise APIError(413, f"{len(entries)} labels in one request; the limit is {MAX_FEEDBACK}")
    labelled = _label(entries) if entries else []
    return jsonify(labelled=len(labelled), skipped=skipped, labels=labelled)


def _label(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with feedback_errors(), database_unavailable():
        return label(engine(), entries, None, lambda model: read_labels(redis_client(), model),
                     lambda job, name: None)


@bp.get("/review/export")
def export() -> ResponseReturnValue:
    """A zip of kept images: `imagefolder` (<label>/<file>.png, labelled ones), `csv` (images/ and labels.csv
    with file,label,id) or `labelstudio` (images/, tasks.json with the model's answer as a pre-annotation and the
    label as an annotation, label_config.xml)."""
    kind = request.args.get("format", "imagefolder")
    if kind not in FORMATS:
        raise APIError(400, f"'format' must be one of {', '.join(FORMATS)}, got {kind[:40]!r}")
    model, reason, labelled = _filters()
    if model is None:
        if len(served()) != 1:
            raise APIError(400, f"name the model: ?model= one of {', '.join(served())}")
        model = served()[0]
    if "labelled" not in request.args:
        labelled = None if kind == "labelstudio" else True
    labels = _labels(model)
    db = engine()
    with database_unavailable():
        rows = review_queue.listed(db, model, reason, labelled, limit=10**9)
    spool = tempfile.SpooledTemporaryFile(max_size=64 * 2**20)
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        _write(archive, kind, labels, rows)
    spool.seek(0)
    return send_file(spool, mimetype="application/zip", as_attachment=True,
                     download_name=f"{model}-review-{kind}.zip")


def _write(archive: zipfile.ZipFile, kind: str, labels: list[str], rows: list[dict[str, Any]]) -> None:
    lines: list[str] = ["file,label,id"]  # csv
    tasks: list[dict[str, Any]] = []  # labelstudio
    for row in rows:
        name = row["review_file"].rsplit("/", 1)[-1]
        truth = labels[row["label"]] if row["label"] is not None else None
        if kind == "imagefolder":
            if truth is None:
                continue
            path = f"{truth.replace('/', '_')}/{name}"
        else:
            path = f"images/{name}"
        try:
            archive.writestr(path, review_queue.read_image(row["review_file"]))
        except OSError:  # gone from REVIEW_DIR (deleted by hand): the export goes on without it
            continue
        if kind == "csv":
            lines.append(_csv_line(path, truth or "", row["request_id"]))
        elif kind == "labelstudio":
            tasks.append(_task(row, path, labels, truth))
    if kind == "csv":
        archive.writestr("labels.csv", "\n".join(lines) + "\n")
    elif kind == "labelstudio":
        archive.writestr("tasks.json", json.dumps(tasks, indent=1))
        choices = "".join(f"\n    <Choice value={quoteattr(name)}/>" for name in labels)
        archive.writestr("label_config.xml", f'<View>\n  <Image name="image" value="$image"/>\n  <Choices '
                                             f'name="label" toName="image" choice="single">{choices}\n  </Choices>\n'
                                             "</View>\n")


def _csv_line(*fields: str) -> str:
    return ",".join('"' + f.replace('"', '""') + '"' if any(c in f for c in ',"\n') else f for f in fields)


def _task(row: dict[str, Any], path: str, labels: list[str], truth: str | None) -> dict[str, Any]:
    """A Label Studio task: the image (served by this API, and in the zip), the model's answer as a prediction."""

    def choice(name: str) -> list[dict[str, Any]]:
        return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [name]}}]

    top = row["top_ids"][0]
    task: dict[str, Any] = {
        "data": {"image": request.host_url.rstrip("/") + f"/review/{row['request_id']}/image", "file": path,
                 "imageclf_id": row["request_id"], "model": row["model"], "version": row["version"],
                 "reasons": row["review"]},
        "predictions": [{"model_version": str(row["version"]), "score": round(float(row["confidence"]), 6),
                         "result": choice(labels[top] if 0 <= top < len(labels) else str(top))}]}
    if truth is not None:
        task["annotations"] = [{"result": choice(truth)}]
    return task
