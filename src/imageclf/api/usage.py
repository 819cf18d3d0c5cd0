"""GET /usage: the calling key's own limits and use (never another key's)."""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue

from imageclf.api.auth import ANONYMOUS
from imageclf.api.errors import APIError
from imageclf.api.quotas import usage
from imageclf.api.submissions import queue_unavailable, redis_client

bp = Blueprint("usage", __name__)


@bp.get("/usage")
def key_usage() -> ResponseReturnValue:
    if g.get("owner", ANONYMOUS) == ANONYMOUS:
        raise APIError(404, "this service has no API keys (API_KEYS, API_KEYS_FILE), so no usage per key")
    with queue_unavailable():
        return jsonify(usage(redis_client(), g.owner, g.limits))
