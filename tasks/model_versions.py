"""The model a worker process serves, and the live rollout of a repository model's versions.

The highest version number in the repository is served. A watcher thread looks at the
model's folder every MODEL_POLL_S; when the highest version changes (a new folder, or
the newest one deleted), it loads and warms that version next to the serving one and
then swaps one reference: the batch function reads `current` once per batch, so the
switch falls between two batches and no request sees a half-loaded model. A version
that fails to load is marked failed, with its error, and the old one keeps serving; it
is tried again only when its files change. Built-in models have one version and no watcher.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger

from models.repository import RepositoryError, fingerprint, versions

if TYPE_CHECKING:
    from models.keras_model import Classifier

logger = get_logger(__name__)

#: A new version folder is loaded once its files stayed the same this long (it may still be being copied).
SETTLE_S = 1.0
#: Scheduling priority of the thread that loads new versions (19: the lowest).
LOADER_NICENESS = 19


def rss_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    import resource

    return round(pages * resource.getpagesize() / 2**20, 1)


class ServedModel:
    """The serving version of one model, with each version's state for GET /models."""

    def __init__(self, name: str, load: Callable[[int], Classifier], model_dir: Path | None = None,
                 poll_s: float = 10.0, on_change: Callable[[], None] = lambda: None) -> None:
        self.name = name
        self.model_dir = model_dir
        self.poll_s = poll_s
        self._load = load
        self._on_change = on_change
        self._states: dict[int, dict[str, Any]] = {}
        self._failed_files: dict[int, tuple] = {}
        self._stop = threading.Event()
        self.current: Classifier | None = None
        self.rss_mb_two_versions: float | None = None

    def start(self) -> Classifier:
        """Load the highest version that loads (older ones are tried when newer ones fail); then watch.

        Raises RepositoryError, naming every version's problem, when none can be served.
        """
        if self.model_dir is None:
            self.current = self._warm(1)
            return self.current
        found = versions(self.model_dir)
        if not found:
            raise RepositoryError(f"{self.model_dir}: holds no version folder (1/, 2/, ... with the model file)")
        for version in reversed(found):
            try:
                self.current = self._warm(version)
                break
            except Exception as exc:
                self._fail(version, exc)
        if self.current is None:
            raise RepositoryError("; ".join(self._states[v]["error"] for v in reversed(found)))
        threading.Thread(target=self._watch, name=f"versions-{self.name}", daemon=True).start()
        return self.current

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """{served_version, versions: {n: {state, error?}}, rss_mb, ...the served version's description}."""
        current = self.current
        states = {str(v): dict(s) for v, s in sorted(dict(self._states).items())}  # a copy: the watcher writes
        if current is not None:
            states[str(current.version)] = {"state": "ready"}
        described = current.describe() if current is not None else {}
        described.pop("version", None)
        return {"served_version": current.version if current else None, "versions": states, **described,
                "rss_mb": rss_mb(), "rss_mb_two_versions": self.rss_mb_two_versions}

    def _warm(self, version: int) -> Classifier:
        self._states[version] = {"state": "loading"}
        self._on_change()
        start = time.perf_counter()
        classifier = self._load(version)
        loaded = time.perf_counter() - start
        warm = classifier.warm_up()
        logger.info("model %s version %d (%s) loaded in %.1f s, warmed up on batch sizes %s in %.1f s (RSS %.0f MB)",
                    self.name, version, classifier.backend, loaded, classifier.warm_sizes, warm, rss_mb())
        self._states[version] = {"state": "ready"}
        self._failed_files.pop(version, None)
        return classifier

    def _fail(self, version: int, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, RepositoryError) else f"{type(exc).__name__}: {exc}"
        logger.error("model %s version %d failed to load: %s", self.name, version, message)
        self._states[version] = {"state": "failed", "error": message}
        if self.model_dir is not None:
            self._failed_files[version] = fingerprint(self.model_dir / str(version))
        self._on_change()

    def _watch(self) -> None:
        try:  # loading runs beside the serving version: give the CPU to serving first (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.poll_s):
            try:
                self._poll()
            except Exception:  # the watcher must outlive any surprise on disk
                logger.exception("model %s: checking for new versions failed", self.name)

    def _poll(self) -> None:
        """One look at the repository: forget deleted versions, switch to the highest that can load."""
        assert self.model_dir is not None and self.current is not None
        present = versions(self.model_dir)
        known = dict(self._states)
        for gone in set(self._states) - set(present) - {self.current.version}:
            del self._states[gone]
            self._failed_files.pop(gone, None)
        for version in present:
            self._states.setdefault(version, {"state": "available"})
        if self._states != known:  # folders came or went: say so now, not at the next heartbeat
            self._on_change()
        candidates = [v for v in present if not self._still_failed(v)]
        if not candidates or candidates[-1] == self.current.version:
            return
        target = candidates[-1]
        before = fingerprint(self.model_dir / str(target))
        if self._stop.wait(SETTLE_S) or fingerprint(self.model_dir / str(target)) != before:
            return  # still being written: next poll
        try:
            new = self._warm(target)
        except Exception as exc:
            self._fail(target, exc)
            return
        self.rss_mb_two_versions = rss_mb()
        old, self.current = self.current, new
        self._states[old.version] = {"state": "available"}
        if old.version not in present:
            del self._states[old.version]
        logger.info("model %s: now serving version %d (was %d); RSS with both loaded %.0f MB",
                    self.name, new.version, old.version, self.rss_mb_two_versions)
        del old
        gc.collect()
        self._on_change()

    def _still_failed(self, version: int) -> bool:
        """Failed before, with the same files: not worth another try until they change."""
        assert self.model_dir is not None
        previous = self._failed_files.get(version)
        return previous is not None and previous == fingerprint(self.model_dir / str(version))
