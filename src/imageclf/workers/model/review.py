"""Selecting answered images for review in the model worker's pool process, where the pixels and the answer are
both in hand: the model's `review` rules (config.json, read again every MODEL_POLL_S) and whether its version
drifts now (a flag the promotion controller refreshes in Redis, imageclf.core.promotion). Only the choice is
made here, in microseconds; the prediction log's writer thread hashes and keeps the image
(imageclf.core.review_queue)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from imageclf import settings
from imageclf.core.celery_app import pixel_store
from imageclf.core.prediction_log import Pending
from imageclf.core.promotion import read_drifting
from imageclf.models.repository import RepositoryError, model_dir, read_raw_config
from imageclf.models.review_rules import ReviewRules, parse_review

logger = logging.getLogger(__name__)
#: Seconds the drift flags are reused.
_DRIFT_EVERY_S = 30.0


class Selector:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._rules: dict[str, tuple[float, ReviewRules | None]] = {}
        self._drifting: dict[str, tuple[float, set[int]]] = {}

    def pending(self, name: str, version: int, who: dict[str, Any], row: np.ndarray, image: np.ndarray
                ) -> Pending | None:
        """The image to keep, with why, when the rules select it (None: not selected, or no rules)."""
        rules = self._rules_of(name)
        if rules is None:
            return None
        best = int(np.argmax(row))
        disagrees = who.get("route") == "shadow" and who.get("against") is not None and best != who["against"]
        reasons = rules.reasons(who["request_id"], float(row[best]), disagrees,
                                rules.drift and version in self._drifting_of(name))
        return Pending(np.array(image), reasons, rules) if reasons else None

    def _rules_of(self, name: str) -> ReviewRules | None:
        at, rules = self._rules.get(name, (-1e9, None))
        if time.monotonic() - at < settings.MODEL_POLL_S:
            return rules
        folder = model_dir(settings.MODEL_REPOSITORY, name)
        try:
            rules = parse_review(read_raw_config(folder).get("review"), Path(folder, "config.json")) if folder else None
        except RepositoryError as exc:  # the worker keeps serving; nothing is kept until the rules are fixed
            logger.warning("review rules ignored: %s", exc)
            rules = None
        self._rules[name] = (time.monotonic(), rules)
        return rules

    def _drifting_of(self, name: str) -> set[int]:
        at, versions = self._drifting.get(name, (-1e9, set()))
        if time.monotonic() - at >= _DRIFT_EVERY_S:
            try:
                versions = read_drifting(self._client, name)
            except redis.RedisError:
                pass
            self._drifting[name] = (time.monotonic(), versions)
        return versions


_selector: Selector | None = None


def selector() -> Selector:
    """This pool process's selector."""
    global _selector
    if _selector is None:
        _selector = Selector(pixel_store())
    return _selector
