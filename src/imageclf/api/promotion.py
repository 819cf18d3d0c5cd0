"""`GET /models/<m>/promotion`: the candidate's rollout as the controller left it (imageclf.core.promotion): its
plan, where it stands, what the next step needs, and the history of decisions with the figures behind each.
Operators pause, resume and abort it through the control API (imageclf.api.admin)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from imageclf import settings
from imageclf.api.served import known_model
from imageclf.api.submissions import queue_unavailable, redis_client
from imageclf.api.uploads import query_number
from imageclf.core.promotion import read_history, read_state
from imageclf.models.promotion_plan import parse_promotion
from imageclf.models.repository import RepositoryError, model_dir, read_raw_config

bp = Blueprint("promotion", __name__)


@bp.get("/models/<model>/promotion")
def promotion(model: str) -> ResponseReturnValue:
    known_model(model)
    count = int(query_number("history", 200, 1, 1000, integer=True))
    with queue_unavailable():
        state = read_state(redis_client(), model)
        history = read_history(redis_client(), model, count)
    plan, problem = _plan(model)
    return jsonify(model=model, plan=plan, problem=problem, status=state.get("status", "not started"),
                   candidate=state.get("candidate"), step=state.get("step"), share=state.get("share"),
                   step_started=state.get("step_started"), note=state.get("note"), next=_next(plan, state),
                   last_check=state.get("last_check"), history=history, check_every_s=settings.PROMOTION_CHECK_S)


def _plan(model: str) -> tuple[dict[str, Any] | None, str | None]:
    """The plan in config.json as the controller reads it, or why it cannot be read."""
    folder = model_dir(settings.MODEL_REPOSITORY, model)
    if folder is None:
        return None, None
    try:
        plan = parse_promotion(read_raw_config(folder).get("promotion"), Path(folder, "config.json"))
    except RepositoryError as exc:
        return None, str(exc)
    return (plan.describe() if plan else None), None


def _next(plan: dict[str, Any] | None, state: dict[str, Any]) -> dict[str, Any] | None:
    """What moves the rollout on: the next share, the hold left, the evidence each step needs."""
    if plan is None or state.get("status") != "running" or plan["candidate"] != state.get("candidate"):
        return None
    steps, step = plan["steps"], int(state.get("step", 0))
    held = time.time() - float(state.get("step_started") or time.time())
    return {"share": steps[step + 1] if step + 1 < len(steps) else "default",
            "hold_left_s": round(max(0.0, plan["hold_s"] - held), 1), "min_compared": plan["min_compared"],
            "min_labelled": plan["min_labelled"]}
