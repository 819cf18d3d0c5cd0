"""Reading request inputs: the uploaded image (validated and resized here) and query numbers."""

from __future__ import annotations

import math

from flask import current_app, request

from imageclf import settings
from imageclf.api.errors import APIError
from imageclf.core import tracing
from imageclf.models.decode_budget import DecodeBusy
from imageclf.models.images import ImageDecodeError, decode_to_pixels

_STATUS_FOR_REASON = {
    ImageDecodeError.UNSUPPORTED: 415,
    ImageDecodeError.CORRUPT: 400,
    ImageDecodeError.TOO_LARGE: 413,
}


def uploaded(field: str) -> tuple[bytes, str]:
    """The multipart file `field`'s bytes and a name for messages, or a 400 naming the fields received."""
    upload = request.files.get(field)
    if upload is None:
        received = ", ".join(sorted(request.files)) or "none"
        raise APIError(
            400, f"missing file field {field!r} in a multipart/form-data body (file fields received: {received})"
        )
    return upload.read(), upload.filename or field


def decode_upload(data: bytes, name: str, size: tuple[int, int], resize: str) -> bytes:
    """`data` decoded to (height, width) = `size` RGB bytes within the decode budget, or a 4xx/503 APIError
    naming `name`."""
    try:
        with tracing.span("decode", **{"imageclf.bytes": len(data)}):
            return decode_to_pixels(data, size, current_app.config["MAX_IMAGE_PIXELS"], resize,
                                    current_app.extensions["decode_budget"], settings.DECODE_WAIT_S)
    except ImageDecodeError as exc:
        raise APIError(_STATUS_FOR_REASON[exc.reason], f"{name}: {exc}") from None
    except DecodeBusy as exc:
        raise APIError(503, str(exc), {"Retry-After": "2"}) from None


def query_number(name: str, default: float, low: float, high: float, integer: bool = False) -> float:
    """Query parameter `name` as a number in [low, high], or a 400 naming the problem."""
    found = _number(f"query parameter {name!r}", request.args.get(name), default, low, high, integer)
    return default if found is None else found


def form_number(name: str, default: float | None, low: float, high: float, integer: bool = False) -> float | None:
    """Form field (or query parameter) `name` as a number in [low, high], or a 400 naming the problem."""
    raw = request.form.get(name, request.args.get(name))
    return _number(f"parameter {name!r}", raw, default, low, high, integer)


def _number(what: str, raw: str | None, default: float | None, low: float, high: float, integer: bool) -> float | None:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"{what} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise APIError(400, f"{what} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def flag(name: str, default: bool) -> bool:
    """A true/false form field or query parameter; 400 for anything else."""
    raw = (request.form.get(name) or request.args.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "1", "yes", "false", "0", "no"):
        raise APIError(400, f"{name!r} must be true or false, got {raw[:20]!r}")
    return raw in ("true", "1", "yes")
