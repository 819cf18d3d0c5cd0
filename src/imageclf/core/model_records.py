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
from pathlib import Path
from typing import Any

import redis

from imageclf.core.readiness import live_workers
from imageclf.models.registry import MODELS as BUILT_IN
from imageclf.models.serving_policy import Routing, parse_policy

SERVED_PREFIX = "imageclf:served:"
FAILED_PREFIX = "imageclf:model-failed:"
#: The class names of the version that serves by default, in class-id order (an evaluation matches a dataset's
#: folder names and labels against them).
LABELS_PREFIX = "imageclf:labels:"
#: Set by the control API's unload (who, when); the model's workers drop every version while it exists.
UNLOADED_PREFIX = "imageclf:model-unloaded:"
#: How long the API and decoders reuse what they read (a rollout reaches them within this).
CACHE_S = 1.0


@dataclass(frozen=True)
class ModelInput:
    """What the API resizes an upload to for a model: the served version's input."""

    height: int
    width: int
    resize: str
    version: int | None
    revision: str = ""  # a short id of the version's files, labels and preprocessing ("": unknown, never cached)


@dataclass(frozen=True)
class ModelRoutes:
    """What the model's workers announced: each ready version's input, and how requests are split."""

    inputs: dict[int, ModelInput]
    routing: Routing

    @property
    def default(self) -> ModelInput:
        return self.inputs[self.routing.default]

    def versions(self) -> list[int]:
        return sorted(self.inputs)


class ModelUnavailable(Exception):
    """No worker can serve this model now; the message says why."""


def record_labels(client: redis.Redis, name: str, labels: list[str]) -> None:
    client.set(LABELS_PREFIX + name, json.dumps(labels))


def read_labels(client: redis.Redis, name: str) -> list[str] | None:
    """The model's class names (None: no worker has announced them yet)."""
    raw = client.get(LABELS_PREFIX + name)
    return json.loads(raw) if raw else None


def record_unloaded(client: redis.Redis, name: str, by: str) -> None:
    client.set(UNLOADED_PREFIX + name, json.dumps({"by": by, "at": time.time()}))


def clear_unloaded(client: redis.Redis, name: str) -> bool:
    """Whether the model had been unloaded."""
    return bool(client.delete(UNLOADED_PREFIX + name))


def read_unloaded(client: redis.Redis, name: str) -> dict[str, Any] | None:
    """{"by", "at"} while an operator has the model unloaded, else None."""
    raw = client.get(UNLOADED_PREFIX + name)
    return json.loads(raw) if raw else None


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
    """Each model's ready versions and routing, read from Redis at most once per CACHE_S per model
    (thread-safe). When the entry is stale, one thread reads it again and the others wait for that read (under
    load, every request thread finding it stale at once would otherwise each make the same reads); none answers
    from an entry older than CACHE_S, so a policy change reaches every request within about a second."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._changed = threading.Condition()
        self._cache: dict[str, tuple[float, ModelRoutes | str]] = {}
        self._reading: set[str] = set()

    def input_of(self, name: str) -> ModelInput:
        """The default version's input; ModelUnavailable if the model failed to load, is unloaded, or was
        never loaded and is not built in. Raises redis.RedisError when Redis is unreachable."""
        return self.routes_of(name).default

    def routes_of(self, name: str) -> ModelRoutes:
        """The ready versions and the routing; ModelUnavailable as for `input_of`."""
        cached = self._fresh(name)
        if isinstance(cached[1], str):
            raise ModelUnavailable(cached[1])
        return cached[1]

    def _fresh(self, name: str) -> tuple[float, ModelRoutes | str]:
        """The entry, read now by this thread or by the one already reading it."""
        with self._changed:
            while True:
                cached = self._cache.get(name)
                if cached is not None and time.monotonic() - cached[0] <= CACHE_S:
                    return cached
                if name not in self._reading:
                    self._reading.add(name)
                    break
                self._changed.wait(CACHE_S)
        try:
            cached = (time.monotonic(), self._read(name))
            with self._changed:
                self._cache[name] = cached
            return cached
        finally:
            with self._changed:
                self._reading.discard(name)
                self._changed.notify_all()

    def _read(self, name: str) -> ModelRoutes | str:
        failed, served, unloaded = self._client.mget([FAILED_PREFIX + name, SERVED_PREFIX + name,
                                                      UNLOADED_PREFIX + name])
        if failed:
            return f"model {name!r} cannot be served: {json.loads(failed)['error']}"
        if unloaded:
            by = json.loads(unloaded)["by"]
            return (f"model {name!r} was unloaded by {by} (POST /v2/repository/models/{name}/load with an admin key "
                    "serves it again)")
        if served:
            found = routes(json.loads(served), _ready_on_every_worker(self._client, name))
            return found or f"model {name!r} has no ready version now; retry shortly"
        if name in BUILT_IN:
            size = BUILT_IN[name].input_size
            return ModelRoutes({1: ModelInput(size, size, "squash", 1)}, Routing(1, {1: 100.0}, None, []))
        return f"model {name!r} is not loaded yet: no worker has announced its input size; retry shortly"


def _ready_on_every_worker(client: redis.Redis, name: str) -> set[int] | None:
    """The versions every live worker of the model has ready (None: no worker says): while several workers
    load a new version, each in its own time, requests go to it only once all of them can run it."""
    sets = [{int(v) for v, state in (w.get("versions") or {}).items() if state.get("state") == "ready"}
            for w in live_workers(client) if w.get("role") == "model" and w.get("model") == name]
    return set.intersection(*sets) if sets else None


def routes(info: dict[str, Any], ready: set[int] | None = None) -> ModelRoutes | None:
    """The routes in a served-model record, limited to the `ready` versions when given (None: no version
    ready, e.g. unloaded)."""
    if "inputs" not in info:  # a record written before several versions could serve: its one version
        height, width = info["input_size"]
        version = info.get("version") or 1
        return ModelRoutes({version: ModelInput(height, width, info.get("resize", "squash"), version)},
                           Routing(version, {version: 100.0}, None, []))
    inputs = {int(v): ModelInput(i["input_size"][0], i["input_size"][1], i["resize"], int(v), i.get("revision", ""))
              for v, i in info["inputs"].items()}
    routing = Routing.from_description(info["routing"]) if info.get("routing") else None
    if ready is not None and ready != set(inputs) and ready & set(inputs) and info.get("policy"):
        inputs = {v: i for v, i in inputs.items() if v in ready}
        routing = parse_policy(info["policy"], Path("the announced policy")).routing(sorted(inputs))
    if not inputs or routing is None or routing.default not in inputs:
        return None
    return ModelRoutes(inputs, routing)
