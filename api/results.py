"""GET /result/<id>: the state and, once known, the result of any request or job this service issued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from api.errors import APIError
from api.submissions import fetch_meta, issued, prediction_body, queue_unavailable, redis_client
from models.confusion_plot import confusion_png
from tasks.job_store import read_csv, read_job
from tasks.result_store import failure_message

bp = Blueprint("results", __name__)


@bp.get("/result/<task_id>")
def result(task_id: str):
    g.task_id = task_id
    info = issued(task_id)
    if info is None:
        raise APIError(404, f"no task with id {task_id!r} (unknown, or its result expired)")
    g.model = info.get("model")
    wanted = request.args.get("format", "json")
    if wanted not in ("json", "csv", "png"):
        raise APIError(400, f"'format' must be json, csv or png, got {wanted[:20]!r}")
    if info.get("kind") == "job":
        body = _job_body(task_id)
        if wanted == "json":
            return jsonify(body)
        return _csv(task_id, _evaluation(body)) if wanted == "csv" else _png(task_id, _evaluation(body))
    if wanted != "json":
        raise APIError(400, f"format={wanted} is for evaluation jobs; this id is a request")
    meta = fetch_meta(task_id)
    status = meta["status"]
    body: dict = {"success": status == "SUCCESS", "id": task_id, "status": status}
    if status == "SUCCESS":
        body["result"] = prediction_body(task_id, meta["result"])
    elif status in ("FAILURE", "REVOKED"):
        body["error"] = failure_message(meta)
    return jsonify(body)


def _evaluation(body: dict[str, Any]) -> dict[str, Any]:
    """A finished evaluation job's result; 400 for another kind of job, 409 while it runs."""
    result = body.get("result") or {}
    if not result.get("evaluate"):
        finished = body["status"] in ("SUCCESS", "FAILURE", "REVOKED")
        raise APIError(400 if finished else 409, "format=csv and format=png are for an evaluation job once it "
                       f"has finished; this job is {'not an evaluation' if finished else body['status']}")
    return result


def _csv(job_id: str, result: dict[str, Any]) -> Response:
    """An evaluation's per-image predictions: file, version, true label, predicted label, probability, correct;
    streamed one stored page at a time."""
    client = redis_client()

    def pages() -> Iterator[bytes]:
        yield b"file,version,true,predicted,probability,correct\r\n"
        yield from read_csv(client, job_id)

    return Response(pages(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="evaluation-{job_id}.csv"'})


def _png(job_id: str, result: dict[str, Any]) -> Response:
    """The confusion-matrix heatmap of one evaluated version (`version`, default the first)."""
    versions = list(result["versions"])
    version = request.args.get("version", versions[0])
    if version not in result["versions"]:
        raise APIError(404, f"version {version[:20]!r} was not evaluated in this job; it evaluated "
                            f"{', '.join(versions)}")
    png = confusion_png(result["versions"][version]["confusion"], f"version {version}: confusion matrix")
    return Response(png, mimetype="image/png",
                    headers={"Content-Disposition": f'inline; filename="confusion-{job_id}-v{version}.png"'})


def _job_body(job_id: str) -> dict[str, Any]:
    """PENDING/PROGRESS with done and total, then the result (SUCCESS) or the error."""
    with queue_unavailable():
        job = read_job(redis_client(), job_id)
    if job is None:
        raise APIError(404, f"no job with id {job_id!r} (its result expired)")
    body: dict[str, Any] = {"success": job["status"] == "SUCCESS", "id": job_id, "kind": job["kind"],
                            "model": job["spec"]["model"], "status": job["status"], "done": job["done"],
                            "total": job["total"]}
    if "result" in job:
        body["result"] = job["result"]
    if "error" in job:
        body["error"] = job["error"]
    return body
