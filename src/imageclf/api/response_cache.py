"""A response cache for /predict (CACHE_TTL_S > 0; off by default).

The key is a hash of the uploaded bytes, the model, the version that would answer, that version's
revision (its files, labels and preprocessing, announced by the workers: imageclf.core.model_records) and
`top`: a new version or a changed config.json gives new keys, so an old answer is never served
for it, and a version whose revision is unknown is never cached. A hit is answered by the API
from one Redis GET, before decoding and without queueing. Only answers computed by the version
the key names are stored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from imageclf import settings
from imageclf.api.models import Route

CACHE_PREFIX = "imageclf:cache:"
#: What a cached answer keeps of a /predict body (the rest describes one run: its id, batch and timings).
KEPT = ("model", "model_version", "predictions")


def cache_key(data: bytes, model: str, route: Route, top: int) -> str | None:
    """The key of this upload's answer, or None when it must not be cached (off, or the revision unknown)."""
    if settings.CACHE_TTL_S <= 0 or not route.revision:
        return None
    digest = hashlib.sha256(data)
    digest.update(f"\0{model}\0{route.version}\0{route.revision}\0{top}".encode())
    return CACHE_PREFIX + digest.hexdigest()


def lookup(client: redis.Redis, key: str) -> dict[str, Any] | None:
    raw = client.get(key)
    return json.loads(raw) if raw else None


def store(client: redis.Redis, key: str, body: dict[str, Any], route: Route) -> bool:
    """Keep `body`'s answer for CACHE_TTL_S when the version the key names computed it; True if stored."""
    if body.get("model_version") != route.version:
        return False
    client.set(key, json.dumps({k: body[k] for k in KEPT}), ex=int(settings.CACHE_TTL_S))
    return True
