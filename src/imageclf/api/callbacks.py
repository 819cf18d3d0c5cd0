"""The `callback_url` form field or query parameter of POST /jobs and /predict, checked before anything is
accepted (imageclf.workers.jobs.webhook_targets, imageclf.workers.jobs.webhooks)."""

from __future__ import annotations

from flask import request

from imageclf import settings
from imageclf.api.errors import APIError
from imageclf.workers.jobs.webhook_targets import TargetRefused, check_target


def requested_callback() -> str | None:
    """The URL to POST the result to when the job or request ends; None when not given; 400 when refused."""
    raw = (request.form.get("callback_url") or request.args.get("callback_url") or "").strip()
    if not raw:
        return None
    if not settings.WEBHOOK_SECRET:
        raise APIError(400, "this service sends no webhooks: WEBHOOK_SECRET (the key that signs them) is not set")
    try:
        return check_target(raw)
    except TargetRefused as exc:
        raise APIError(400, str(exc)) from None
