"""What the model workers tell everyone else about their models, through Redis.

The API and the decoders never load a model (no TensorFlow there, maybe no shared
disk either), yet they must resize uploads to the input of the version being served,
which only the model file knows. So a worker that switches to a version records its
input here (no TTL: it holds while workers restart), and a worker whose model cannot be
loaded at all records why, so that requests are refused with that reason instead of
queued for nobody, and `/readyz`, `GET /models` and `make run` can say it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from models.registry import MODELS as BUILT_IN

SERVED_PREFIX = "imageclf:served:"
FAILED_PREFIX = "imageclf:model-failed:"
#: How long the API and decoders reuse what they read (a rollout reaches them within this).
CACHE_S = 1.0


@dataclass(frozen=True)
class ModelInput:
    """What the API resizes an upload to for a model: the served version's input."""

    height: int
    width: int
    resize: str
    version: int | None


class ModelUnavailable(Exception):
    """No worker can serve this model now; the message says why."""


def record_served(client: redis.Redis, name: str, description: dict[str, Any]) -> None:
    client.set(SERVED_PREFIX + name, json.dumps(description))


def record_failure(client: redis.Redis, name: str, error: str) -> None:
    client.set(FAILED_PREFIX + name, json.dumps({"error": error, "at": time.time()}))


def clear_failure(client: redis.Redis, name: str) -> None:
    client.delete(FAILED_PREFIX + name)


def read_failure(client: redis.Redis, name: str) -> dict[str, Any] | None:
    """{"error", "at"} when the model's workers could not load it, else None."""
    raw = client.get(FAILED_PREFIX + name)
    return json.loads(raw) if raw else None


def read_failures(client: redis.Redis, names: list[str]) -> dict[str, dict[str, Any] | None]:
    """read_failure for each of `names`, in one round trip."""
    raws = client.mget([FAILED_PREFIX + n for n in names]) if names else []
    return {n: json.loads(raw) if raw else None for n, raw in zip(names, raws)}


def read_served(client: redis.Redis, names: list[str]) -> dict[str, dict[str, Any] | None]:
    """The last served version's description of each model (None: no worker has served it yet)."""
    raws = client.mget([SERVED_PREFIX + n for n in names]) if names else []
    return {n: json.loads(raw) if raw else None for n, raw in zip(names, raws)}


class InputLookup:
    """Each model's current input, read from Redis at most once per CACHE_S per model (thread-safe)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ModelInput | str]] = {}

    def input_of(self, name: str) -> ModelInput:
        """The model's input; ModelUnavailable if it failed to load or was never loaded and is not built in.

        Raises redis.RedisError when Redis is unreachable.
        """
        with self._lock:
            cached = self._cache.get(name)
        if cached is None or time.monotonic() - cached[0] > CACHE_S:
            cached = (time.monotonic(), self._read(name))
            with self._lock:
                self._cache[name] = cached
        if isinstance(cached[1], str):
            raise ModelUnavailable(cached[1])
        return cached[1]

    def _read(self, name: str) -> ModelInput | str:
        failed, served = self._client.mget([FAILED_PREFIX + name, SERVED_PREFIX + name])
        if failed:
            return f"model {name!r} cannot be served: {json.loads(failed)['error']}"
        if served:
            info = json.loads(served)
            height, width = info["input_size"]
            return ModelInput(height, width, info.get("resize", "squash"), info.get("version"))
        if name in BUILT_IN:
            size = BUILT_IN[name].input_size
            return ModelInput(size, size, "squash", 1)
        return f"model {name!r} is not loaded yet: no worker has announced its input size; retry shortly"
