"""The versions of a model a worker process serves, rolled out live from the repository.

Which versions serve follows the model's config.json (`version_policy`, imageclf.models.serving_policy;
by default the highest version alone). A watcher thread looks at the model's folder every
MODEL_POLL_S; when the versions to serve change (a new folder, a deleted one, an edited
policy), it loads and warms each new one next to the serving ones, then publishes the new
set as one dict: the batch function reads it once per batch, so a switch falls between two
batches and no request sees a half-loaded model. A version leaving the set is kept for
UNLOAD_GRACE_S after the new routing is announced, for the requests already routed to it.
A version that fails to load is marked failed, with its error, gets no traffic (its share
goes to the default), and is tried again only when its files change. An operator's unload
(the control API) drops every version until a load. Built-in models have one version.
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

from imageclf.core.readiness import rss_mb
from imageclf.models.repository import RepositoryError, content_revision, fingerprint, read_raw_config, versions
from imageclf.models.serving_policy import ServingPolicy, parse_policy

if TYPE_CHECKING:
    from imageclf.models.keras_model import Classifier

logger = get_logger(__name__)

#: A new version folder is loaded once its files stayed the same this long (it may still be being copied).
SETTLE_S = 1.0
#: How long a version that leaves keeps answering after the new routing is announced (the API rereads it
#: every second, imageclf.core.model_records.CACHE_S).
UNLOAD_GRACE_S = 3.0
#: Scheduling priority of the thread that loads new versions (19: the lowest).
LOADER_NICENESS = 19


class ServedModel:
    """The serving versions of one model, with each version's state for GET /models."""

    def __init__(self, name: str, load: Callable[[int], Classifier], model_dir: Path | None = None,
                 poll_s: float = 10.0, on_change: Callable[[], None] = lambda: None,
                 unloaded_by: Callable[[], str | None] = lambda: None, builtin_revision: str = "") -> None:
        self.name = name
        self.model_dir = model_dir
        self.poll_s = poll_s
        self._load = load
        self._on_change = on_change
        self._unloaded_by = unloaded_by
        self._states: dict[int, dict[str, Any]] = {}
        self._failed_files: dict[int, tuple] = {}
        self._memory_mb: dict[int, float] = {}
        #: Each served version's content_revision (a built-in model's: `builtin_revision`), for response caches.
        self._revisions: dict[int, str] = {}
        self._builtin_revision = builtin_revision
        self._stop = threading.Event()
        #: The ready versions; replaced whole (never changed in place), read once per batch.
        self.served: dict[int, Classifier] = {}
        self.policy = ServingPolicy()
        self.policy_error: str | None = None
        self.routing = self.policy.routing([])
        self.unloaded: str | None = None
        self.rss_mb_two_versions: float | None = None

    @property
    def current(self) -> Classifier | None:
        """The default version: what requests that name no version get (None while nothing serves)."""
        return self.served.get(self.routing.default)

    def start(self) -> Classifier:
        """Load the versions the policy serves (older ones are tried when the newest fail); then watch.

        Raises RepositoryError, naming every version's problem, when none can be served.
        """
        if self.model_dir is None:
            self._publish({1: self._warm(1)})
        else:
            found = versions(self.model_dir)
            if not found:
                raise RepositoryError(f"{self.model_dir}: holds no version folder (1/, 2/, ... with the model file)")
            self.policy = parse_policy(read_raw_config(self.model_dir), self.model_dir / "config.json")
            self._sync(found, settle=False)
            if not self.served:
                errors = [self._states[v]["error"] for v in reversed(found) if "error" in self._states.get(v, {})]
                raise RepositoryError("; ".join(errors) or (
                    f"{self.model_dir / 'config.json'}: 'version_policy' {self.policy.describe()['version_policy']} "
                    f"serves none of the versions present ({', '.join(map(str, found))})"))
        threading.Thread(target=self._watch, name=f"versions-{self.name}", daemon=True).start()
        assert self.current is not None
        return self.current

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """{served_version, versions: {n: {state, share, rss_mb, error?}}, routing, policy, rss_mb, ...}."""
        current, routing = self.current, self.routing
        states = {str(v): dict(s) for v, s in sorted(dict(self._states).items())}  # a copy: the watcher writes
        for version, state in states.items():
            share = routing.shares.get(int(version))
            if share is not None:
                state["share"] = share
            if routing.shadow is not None and routing.shadow.version == int(version):
                state["shadow_share"] = routing.shadow.share
            if int(version) in self._memory_mb:
                state["rss_mb"] = self._memory_mb[int(version)]
        described = current.describe() if current is not None else {}
        described.pop("version", None)
        return {"served_version": current.version if current else None, "versions": states, **described,
                "routing": routing.describe(), "policy": self.policy.describe(), "policy_error": self.policy_error,
                "unloaded": self.unloaded, "rss_mb": rss_mb(), "rss_mb_two_versions": self.rss_mb_two_versions}

    def inputs(self) -> dict[str, dict[str, Any]]:
        """Each ready version's input, for the API that resizes uploads to it."""
        return {str(v): {"input_size": list(c.input_shape[:2]), "resize": c.resize,
                         "revision": self._revisions.get(v, "")} for v, c in self.served.items()}

    def _publish(self, served: dict[int, Classifier], draining: frozenset[int] | set[int] = frozenset()) -> None:
        """Make `served` the ready set and route over it (less `draining`, which takes no new requests)."""
        self._revisions = self._current_revisions(served)
        self.served = dict(sorted(served.items()))
        self.routing = self.policy.routing([v for v in self.served if v not in draining])
        for version in self.served:
            self._states[version] = {"state": "draining" if version in draining else "ready"}
        self._on_change()

    def _current_revisions(self, served: dict[int, Classifier]) -> dict[int, str]:
        if self.model_dir is None:
            return {v: self._builtin_revision for v in served}
        return {v: content_revision(self.model_dir, v) for v in served}

    def _warm(self, version: int) -> Classifier:
        self._states[version] = {"state": "loading"}
        self._on_change()
        start, before = time.perf_counter(), rss_mb()
        classifier = self._load(version)
        loaded = time.perf_counter() - start
        warm = classifier.warm_up()
        self._memory_mb[version] = round(max(0.0, rss_mb() - before), 1)
        logger.info("model %s version %d (%s) loaded in %.1f s, warmed up on batch sizes %s in %.1f s (RSS %.0f MB)",
                    self.name, version, classifier.backend, loaded, classifier.warm_sizes, warm, rss_mb())
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
        try:  # loading runs beside the serving versions: give the CPU to serving first (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.poll_s):
            try:
                self._poll()
            except Exception:  # the watcher must outlive any surprise on disk
                logger.exception("model %s: checking for new versions failed", self.name)

    def _poll(self) -> None:
        """One look at the operator's unload flag and the repository: forget deleted versions, reread the
        policy, load what it now serves and drop what it no longer does."""
        unloaded = self._unloaded_by()
        if unloaded != self.unloaded:
            self._set_unloaded(unloaded)
        if self.unloaded or self.model_dir is None:
            return
        present = versions(self.model_dir)
        known = dict(self._states)
        for gone in set(self._states) - set(present) - set(self.served):
            del self._states[gone]
            self._failed_files.pop(gone, None)
        for version in present:
            self._states.setdefault(version, {"state": "available"})
        error = self.policy_error
        try:
            policy = parse_policy(read_raw_config(self.model_dir), self.model_dir / "config.json")
            self.policy_error = None
        except RepositoryError as exc:  # a bad edit: say so, keep serving by the policy that was good
            if self.policy_error != str(exc):
                logger.error("model %s: config.json's policy is not applied: %s", self.name, exc)
            self.policy_error, policy = str(exc), self.policy
        changed = policy != self.policy or self.policy_error != error or (
            self._current_revisions(self.served) != self._revisions)  # a version's files or config.json changed
        self.policy = policy
        if self._states != known or changed:  # say so now, not at the next heartbeat
            self._publish(self.served)
        self._sync(present, settle=True)

    def _sync(self, present: list[int], settle: bool) -> None:
        """Load, newest first, each version the policy serves out of those that load; then drop the rest."""
        while True:
            wanted = self.policy.select([v for v in present if not self._still_failed(v)])
            missing = [v for v in reversed(wanted) if v not in self.served]
            if not missing:
                break
            target = missing[0]
            if settle and self.model_dir is not None:  # a repository model (a built-in has no folder to watch)
                before = fingerprint(self.model_dir / str(target))
                if self._stop.wait(SETTLE_S) or fingerprint(self.model_dir / str(target)) != before:
                    return  # still being written: next poll
            try:
                new = self._warm(target)
            except Exception as exc:
                self._fail(target, exc)
                continue
            self._publish({**self.served, target: new})
            if len(self.served) > 1:
                self.rss_mb_two_versions = rss_mb()
            logger.info("model %s: version %d ready; serving %s, default %d", self.name, target,
                        sorted(self.served), self.routing.default)
        leaving = {v for v in self.served if v not in wanted}
        if leaving and len(leaving) < len(self.served):
            self._drain(leaving)
        elif self.routing.default not in self.served or self.routing != self.policy.routing(sorted(self.served)):
            self._publish(self.served)

    def _drain(self, leaving: set[int]) -> None:
        """Stop routing to `leaving`, wait for requests already routed there, then free them."""
        self._publish(self.served, draining=leaving)
        logger.info("model %s: version(s) %s leave; now serving %s, default %d", self.name, sorted(leaving),
                    sorted(set(self.served) - leaving), self.routing.default)
        self._stop.wait(UNLOAD_GRACE_S)
        self._forget(leaving)

    def _forget(self, leaving: set[int]) -> None:
        kept = {v: c for v, c in self.served.items() if v not in leaving}
        for version in leaving:
            self._memory_mb.pop(version, None)
            self._states[version] = {"state": "available"}
            if self.model_dir is not None and version not in versions(self.model_dir):
                del self._states[version]
        self._publish(kept)
        gc.collect()

    def _set_unloaded(self, by: str | None) -> None:
        """An operator unloaded the model (drop every version) or loaded it again (load as at start)."""
        self.unloaded = by
        if by:
            logger.info("model %s: unloaded (%s)", self.name, by)
            self._forget(set(self.served))
            for version in self._states:
                self._states[version] = {"state": "unloaded", "reason": by}
            self._on_change()
        else:
            logger.info("model %s: loaded again", self.name)
            self._failed_files.clear()
            if self.model_dir is None:
                self._publish({1: self._warm(1)})

    def _still_failed(self, version: int) -> bool:
        """Failed before, with the same files: not worth another try until they change."""
        assert self.model_dir is not None
        previous = self._failed_files.get(version)
        return previous is not None and previous == fingerprint(self.model_dir / str(version))
