"""How a candidate version is promoted by evidence: a model's `promotion` plan (config.json) and the decision each
check makes from the figures of the step's period (imageclf.core.promotion gathers them and acts).

    "promotion": {"candidate": 2,                  the version to promote
                  "steps": [5, 25, 50, 100],       its canary share, step by step (the last is 100: the default)
                  "hold": "10m",                   each step lasts at least this long ("90s", "10m", "2h", or s)
                  "min_compared": 500,             shadow comparisons, and the candidate's answered requests
                                                   (its latency) and images (its error rate), needed in a step
                  "min_labelled": 200,             labelled answers of each version needed in a step
                  "agreement_at_least": 0.97,      top-1 agreement with the default on the same images
                  "accuracy_drop_at_most": 0.01,   the default's labelled accuracy less the candidate's
                  "p95_ratio_at_most": 1.25,       the candidate's p95 request latency over the default's
                  "error_rate_at_most": 0.001,     the candidate's failed images over its images
                  "dry_run": false}                true: decide and log, change nothing

A guard set to null is not checked. Pure Python: the control API checks a plan with this parser too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageclf.models.repository import RepositoryError

GUARDS = ("agreement_at_least", "accuracy_drop_at_most", "p95_ratio_at_most", "error_rate_at_most")
_KEYS = ("candidate", "steps", "hold", "min_compared", "min_labelled", *GUARDS, "dry_run")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_GUARDS: dict[str, float | None] = {"agreement_at_least": 0.97, "accuracy_drop_at_most": 0.01,
                                           "p95_ratio_at_most": 1.25, "error_rate_at_most": 0.001}


@dataclass(frozen=True)
class PromotionPlan:
    candidate: int
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    hold_s: float = 600.0
    min_compared: int = 500
    min_labelled: int = 200
    guards: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_GUARDS))
    dry_run: bool = False

    def describe(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "steps": list(self.steps), "hold_s": self.hold_s,
                "min_compared": self.min_compared, "min_labelled": self.min_labelled, **self.guards,
                "dry_run": self.dry_run}


@dataclass(frozen=True)
class Evidence:
    """What one step's period showed: shadow comparisons, labelled answers of each version, request latencies (p95,
    ms; how many the candidate answered), and the candidate's images and failures."""

    compared: int = 0
    agreed: int = 0
    candidate_labelled: int = 0
    candidate_correct: int = 0
    default_labelled: int = 0
    default_correct: int = 0
    candidate_latencies: int = 0
    candidate_p95_ms: float | None = None
    default_p95_ms: float | None = None
    images: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Decision:
    """`action`: "advance", "rollback" or "wait"; `failed`: the guards that failed (rollback); `figures`: each
    guard's value, limit, whether it held (None: not enough evidence yet) and the evidence behind it."""

    action: str
    figures: dict[str, dict[str, Any]]
    failed: list[str] = field(default_factory=list)


def decide(plan: PromotionPlan, held_s: float, evidence: Evidence) -> Decision:
    """Roll back as soon as a guard with enough evidence fails; advance once the step was held `plan.hold_s` and
    every guard has enough evidence and holds; else wait."""
    e = evidence
    enough_compared = e.compared >= max(1, plan.min_compared)
    enough_labelled = min(e.candidate_labelled, e.default_labelled) >= max(1, plan.min_labelled)
    figures: dict[str, dict[str, Any]] = {}

    def check(guard: str, value: float | None, enough: bool, evidence_of: dict[str, Any], at_least: bool) -> None:
        limit = plan.guards.get(guard)
        if limit is None:
            return
        ok = None if not enough or value is None else (value >= limit if at_least else value <= limit)
        figures[guard] = {"value": None if value is None else round(value, 6), "limit": limit, "ok": ok,
                          **evidence_of}

    check("agreement_at_least", e.agreed / e.compared if e.compared else None, enough_compared,
          {"compared": e.compared}, True)
    accuracy = (e.default_correct / e.default_labelled - e.candidate_correct / e.candidate_labelled
                if e.candidate_labelled and e.default_labelled else None)
    check("accuracy_drop_at_most", accuracy, enough_labelled,
          {"candidate_accuracy": round(e.candidate_correct / e.candidate_labelled, 6) if e.candidate_labelled else None,
           "default_accuracy": round(e.default_correct / e.default_labelled, 6) if e.default_labelled else None,
           "candidate_labelled": e.candidate_labelled, "default_labelled": e.default_labelled}, False)
    ratio = (e.candidate_p95_ms / e.default_p95_ms if e.candidate_p95_ms is not None and e.default_p95_ms
             else None)
    check("p95_ratio_at_most", ratio, e.candidate_latencies >= max(1, plan.min_compared),
          {"candidate_p95_ms": e.candidate_p95_ms, "default_p95_ms": e.default_p95_ms,
           "candidate_requests": e.candidate_latencies}, False)
    check("error_rate_at_most", e.errors / e.images if e.images else None, e.images >= max(1, plan.min_compared),
          {"images": e.images, "errors": e.errors}, False)
    failed = [guard for guard, figure in figures.items() if figure["ok"] is False]
    if failed:
        return Decision("rollback", figures, failed)
    if held_s >= plan.hold_s and all(figure["ok"] for figure in figures.values()) \
            and (plan.min_compared == 0 or enough_compared) and (plan.min_labelled == 0 or enough_labelled):
        return Decision("advance", figures)
    return Decision("wait", figures)


def parse_duration(value: Any, path: Path, key: str) -> float:
    """Seconds from a number of seconds or a string such as "90s", "10m", "2h"."""
    if isinstance(value, str) and value[:-1] and value[-1:] in _UNITS:
        try:
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        except ValueError:
            seconds = -1.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = -1.0
    if not (math.isfinite(seconds) and 0 <= seconds <= 30 * 86400):
        raise RepositoryError(f"{path}: 'promotion' {key} must be a duration such as \"10m\", \"90s\" or a number "
                              f"of seconds (up to 30 days), got {value!r}")
    return seconds


def parse_promotion(raw: Any, path: Path) -> PromotionPlan | None:
    """The `promotion` key of a config.json (None: no key); RepositoryError names what is wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or "candidate" not in raw:
        raise RepositoryError(f"{path}: 'promotion' must be an object naming its 'candidate' version, got {raw!r}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise RepositoryError(f"{path}: 'promotion' has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(_KEYS)}")
    candidate = raw["candidate"]
    if isinstance(candidate, bool) or not isinstance(candidate, int) or candidate < 1:
        raise RepositoryError(f"{path}: 'promotion' candidate must be a version number, got {candidate!r}")
    fields: dict[str, Any] = {"candidate": candidate}
    if "steps" in raw:
        steps = raw["steps"]
        if not (isinstance(steps, list) and steps and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 100 for s in steps)
                and all(a < b for a, b in zip(steps, steps[1:])) and steps[-1] == 100 and len(steps) > 1):
            raise RepositoryError(f"{path}: 'promotion' steps must be rising canary shares in percent, at least one "
                                  f"below 100 and the last 100, such as [5, 25, 50, 100], got {steps!r}")
        fields["steps"] = tuple(float(s) for s in steps)
    if "hold" in raw:
        fields["hold_s"] = parse_duration(raw["hold"], path, "hold")
    for key in ("min_compared", "min_labelled"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RepositoryError(f"{path}: 'promotion' {key} must be a count (0 or more), got {value!r}")
            fields[key] = value
    guards = dict(DEFAULT_GUARDS)
    for key in GUARDS:
        if key in raw:
            value = raw[key]
            high = math.inf if key == "p95_ratio_at_most" else 1.0
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= high):
                raise RepositoryError(f"{path}: 'promotion' {key} must be a number from 0 to "
                                      f"{'any' if high == math.inf else '1'} or null (not checked), got {value!r}")
            guards[key] = None if value is None else float(value)
    fields["guards"] = guards
    if "dry_run" in raw:
        if not isinstance(raw["dry_run"], bool):
            raise RepositoryError(f"{path}: 'promotion' dry_run must be true or false, got {raw['dry_run']!r}")
        fields["dry_run"] = raw["dry_run"]
    return PromotionPlan(**fields)
