"""GET /result/<id>: the state and, once known, the result of any request or job this service issued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from flask.typing import ResponseReturnValue

from imageclf.api.errors import APIError
from imageclf.api.submissions import fetch_meta, issued, queue_unavailable, redis_client
from imageclf.models.confusion_plot import confusion_png
from imageclf.workers.jobs.result_bodies import job_body, request_body, with_webhook
from imageclf.workers.jobs.store import read_csv

bp = Blueprint("results", __name__)


@bp.get("/result/<task_id>")
def result(task_id: str) -> ResponseReturnValue:
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
    body = request_body(task_id, fetch_meta(task_id))
    with queue_unavailable():
        return jsonify(with_webhook(redis_client(), body))


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
    with queue_unavailable():
        body = job_body(redis_client(), job_id)
        if body is None:
            raise APIError(404, f"no job with id {job_id!r} (its result expired)")
        return with_webhook(redis_client(), body)
