"""GET /usage: the calling key's own limits and use (never another key's)."""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue

from api.auth import ANONYMOUS
from api.errors import APIError
from api.quotas import usage
from api.submissions import queue_unavailable, redis_client

bp = Blueprint("usage", __name__)


@bp.get("/usage")
def key_usage() -> ResponseReturnValue:
    if g.get("owner", ANONYMOUS) == ANONYMOUS:
        raise APIError(404, "this service has no API keys (API_KEYS, API_KEYS_FILE), so no usage per key")
    with queue_unavailable():
        return jsonify(usage(redis_client(), g.owner, g.limits))
