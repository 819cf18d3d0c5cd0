"""What GET /result/<id> answers, built from Redis alone: the API serves it, and a webhook delivers the very
same JSON from a decoder worker (no Flask there)."""

from __future__ import annotations

from typing import Any

import redis

from imageclf.core.redis_clients import text
from imageclf.core.result_store import failure_message, read_meta
from imageclf.workers.jobs.store import read_job

#: imageclf:webhook:<id>  hash: attempts, last_status, delivered_at, error of the id's completion webhook
WEBHOOK_PREFIX = "imageclf:webhook:"


def prediction_body(task_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """The POST /predict success body (also nested in GET /result)."""
    return {
        "success": True,
        "id": task_id,
        "model": result["model"],
        "model_version": result.get("model_version"),
        "predictions": result["predictions"],
        "batch_id": result["batch_id"],
        "batch_size": result["batch_size"],
        "deliveries": result.get("deliveries", 1),
        "timings": dict(result["timings"]),
    }


def request_body(task_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A single request's state: its status, then its answer (SUCCESS) or why it has none."""
    status = meta["status"]
    body: dict[str, Any] = {"success": status == "SUCCESS", "id": task_id, "status": status}
    if status == "SUCCESS":
        body["result"] = prediction_body(task_id, meta["result"])
    elif status in ("FAILURE", "REVOKED"):
        body["error"] = failure_message(meta)
    return body


def job_body(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """A job's state: PENDING/PROGRESS with done and total, then the result (SUCCESS) or the error; None when
    unknown or expired."""
    job = read_job(client, job_id)
    if job is None:
        return None
    body: dict[str, Any] = {"success": job["status"] == "SUCCESS", "id": job_id, "kind": job["kind"],
                            "model": job["spec"]["model"], "status": job["status"], "done": job["done"],
                            "total": job["total"]}
    if "result" in job:
        body["result"] = job["result"]
    if "error" in job:
        body["error"] = job["error"]
    return body


def result_body(client: redis.Redis, task_id: str, kind: str) -> dict[str, Any] | None:
    """GET /result/<id>'s JSON for an issued id of `kind` ("job" or a request)."""
    body = job_body(client, task_id) if kind == "job" else request_body(task_id, read_meta(client, task_id))
    return with_webhook(client, body) if body is not None else None


def with_webhook(client: redis.Redis, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with `webhook: {attempts, last_status, delivered_at}` when its id has a callback_url that was tried."""
    raw = client.hgetall(WEBHOOK_PREFIX + body["id"])
    if raw:
        fields = {text(k): text(v) for k, v in raw.items()}
        body["webhook"] = {"attempts": int(fields.get("attempts", 0)),
                           "last_status": int(fields["last_status"]) if fields.get("last_status") else None,
                           "delivered_at": float(fields["delivered_at"]) if fields.get("delivered_at") else None,
                           **({"error": fields["error"]} if fields.get("error") else {})}
    return body
