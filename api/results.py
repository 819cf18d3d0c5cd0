"""GET /result/<id>: the state and, once known, the result of any id this service issued."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.errors import APIError
from api.result_store import failure_message
from api.submissions import fetch_meta, issued, prediction_body

bp = Blueprint("results", __name__)


@bp.get("/result/<task_id>")
def result(task_id: str):
    if issued(task_id) is None:
        raise APIError(404, f"no task with id {task_id!r} (unknown, or its result expired)")
    meta = fetch_meta(task_id)
    status = meta["status"]
    body: dict = {"success": status == "SUCCESS", "id": task_id, "status": status}
    if status == "SUCCESS":
        body["result"] = prediction_body(task_id, meta["result"])
    elif status in ("FAILURE", "REVOKED"):
        body["error"] = failure_message(meta)
    return jsonify(body)
