"""Optional API keys: with API_KEYS set, every endpoint but health, metrics and docs needs one.

The control API (imageclf.api.admin) and the review queue (imageclf.api.review) take only ADMIN_API_KEYS, and
check them themselves (`admin_key`).

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Work is recorded
under a hash of the key that submitted it, so one key cannot read another's results.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, g, request

from imageclf import settings
from imageclf.api.errors import APIError
from imageclf.api.keyring import KeyRing, Limits, owner_of

# Health checks (ours and the Open Inference Protocol's), metrics (aggregate counts only), the API's
# documentation and the web page (which asks for a key itself) need no key.
_OPEN_ENDPOINTS = {"health.healthz", "health.readyz", "metrics.metrics", "openapi.openapi_json", "openapi.docs",
                   "web.index", "static", "v2.live", "v2.ready"}
ANONYMOUS = "-"


def presented_key(authorization: str, api_key: str | None) -> str | None:
    """The key from an `Authorization: Bearer <key>` value, else from `X-API-Key` (HTTP headers or gRPC metadata)."""
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return api_key


def known_owner(key: str | None, owners: list[str]) -> str | None:
    """The owner id of `key` when it is one of `owners` (compared in constant time), else None."""
    owner = owner_of(key) if key else ""
    return owner if any(hmac.compare_digest(owner, known) for known in owners) else None


def admin_key(what: str) -> str:
    """Who asked, by the id of their admin key (ADMIN_API_KEYS); 401 without a key, 403 for any other key or while
    ADMIN_API_KEYS is unset. `what` names the routes in the messages."""
    if not settings.ADMIN_API_KEYS:
        raise APIError(403, f"{what} is off: set ADMIN_API_KEYS (comma-separated keys) to enable it, and send one as "
                            "Authorization: Bearer <key> or X-API-Key")
    key = presented_key(request.headers.get("Authorization", ""), request.headers.get("X-API-Key"))
    if not key:
        raise APIError(401, f"{what} needs an admin key (ADMIN_API_KEYS) as Authorization: Bearer <key> or X-API-Key",
                       {"WWW-Authenticate": "Bearer"})
    owner = known_owner(key, [owner_of(k) for k in settings.ADMIN_API_KEYS])
    if owner is None:
        raise APIError(403, "this route needs an admin key (ADMIN_API_KEYS); API_KEYS do not open it")
    return f"admin key {owner[:12]}"


def init_auth(app: Flask, keyring: KeyRing) -> None:
    """Check keys before every request when the service has any; `g.owner` says who asked, `g.limits` with
    which limits (imageclf.api.quotas); admitted responses carry the RateLimit headers of their charge."""
    app.extensions["keyring"] = keyring

    @app.before_request
    def _authenticate() -> None:
        g.owner, g.limits = ANONYMOUS, Limits()
        if not keyring.enabled or request.endpoint in _OPEN_ENDPOINTS \
                or (request.endpoint or "").startswith(("admin.", "review.")):
            return  # the control API and the review queue check their own keys
        key = presented_key(request.headers.get("Authorization", ""), request.headers.get("X-API-Key"))
        found = keyring.lookup(key)
        if found is None:
            raise APIError(401, "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                           {"WWW-Authenticate": "Bearer"})
        g.owner, g.limits = found

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        decision = g.get("rate_limit")
        if decision is not None:
            response.headers.update(decision.headers())
        return response
