"""The review rules, the perceptual hash and the promotion's decisions, on their own (pure functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imageclf.models.promotion_plan import Evidence, decide, parse_promotion
from imageclf.models.repository import RepositoryError
from imageclf.models.review_rules import hamming, parse_review, perceptual_hash

HERE = Path("config.json")


def test_review_rules_select_what_they_say():
    rules = parse_review({"confidence_below": 0.5, "shadow_disagrees": True, "drift": True, "random_share": 0},
                         HERE)
    assert rules.reasons("a", 0.49, False, False) == ["confidence_below"]
    assert rules.reasons("a", 0.5, False, False) == []
    assert rules.reasons("a", 0.9, True, True) == ["shadow_disagrees", "drift"]
    everything = parse_review({"random_share": 100}, HERE)
    assert everything.reasons("any", 1.0, False, False) == ["random_share"]
    some = parse_review({"random_share": 10}, HERE)
    chosen = sum(bool(some.reasons(f"request-{i}", 1.0, False, False)) for i in range(20_000))
    assert 1700 < chosen < 2300  # a stable 10 %
    assert parse_review(None, HERE) is None


@pytest.mark.parametrize("raw, problem", [
    ([], "must be an object"), ({"confidence": 0.5}, "unknown key"), ({"confidence_below": 2}, "from 0 to 1"),
    ({"drift": "yes"}, "true or false"), ({"random_share": 101}, "from 0 to 100"),
    ({"max_per_day": 1.5}, "integer"), ({"distance": 40}, "from 0 to 32"),
])
def test_bad_review_rules_are_named(raw, problem):
    with pytest.raises(RepositoryError, match=problem):
        parse_review(raw, HERE)


def _frame(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """`base` with sensor noise and a shift of a pixel or two: a near-identical video frame."""
    noisy = base.astype(np.int16) + rng.integers(-6, 7, base.shape)
    return np.roll(np.clip(noisy, 0, 255).astype(np.uint8), int(rng.integers(0, 3)), axis=1)


def test_near_identical_frames_hash_together_and_other_images_apart():
    rng = np.random.default_rng(0)
    scenes = []
    for _ in range(5):
        scene = np.zeros((160, 160, 3), np.uint8)
        for _ in range(6):  # a few coloured blocks: a scene
            y, x = rng.integers(0, 120, 2)
            scene[y:y + 40, x:x + 40] = rng.integers(0, 256, 3)
        scenes.append(scene)
    frames = [perceptual_hash(_frame(rng, scenes[0])) for _ in range(10)]
    assert max(hamming(frames[0], h) for h in frames) <= 6
    others = [perceptual_hash(scene) for scene in scenes[1:]]
    assert min(hamming(frames[0], h) for h in others) > 6
    assert all(-(1 << 63) <= h < (1 << 63) for h in frames + others)  # fits PostgreSQL's bigint


PLAN = {"candidate": 2, "steps": [5, 25, 50, 100], "hold": "10m", "min_compared": 500, "min_labelled": 200,
        "agreement_at_least": 0.97, "accuracy_drop_at_most": 0.01, "p95_ratio_at_most": 1.25,
        "error_rate_at_most": 0.001}
GOOD = Evidence(compared=600, agreed=599, candidate_labelled=250, candidate_correct=230, default_labelled=250,
                default_correct=231, candidate_latencies=600, candidate_p95_ms=11.0, default_p95_ms=10.0, images=900,
                errors=0)


def test_a_plan_reads_as_the_issue_writes_it():
    plan = parse_promotion(PLAN, HERE)
    assert plan.hold_s == 600 and plan.steps == (5, 25, 50, 100) and not plan.dry_run
    assert parse_promotion({"candidate": 3, "hold": "90s", "dry_run": True}, HERE).hold_s == 90
    for bad, problem in [({"steps": [5, 25]}, "steps"), ({"steps": [50, 25, 100]}, "steps"), ({"hold": "soon"}, "hold"),
                         ({"min_labelled": -1}, "count"), ({"agreement_at_least": 2}, "0 to 1"),
                         ({"colour": 1}, "unknown")]:
        with pytest.raises(RepositoryError, match=problem):
            parse_promotion({**PLAN, **bad}, HERE)


def test_decisions_wait_for_the_hold_and_the_evidence_then_advance():
    plan = parse_promotion(PLAN, HERE)
    assert decide(plan, 599, GOOD).action == "wait"
    assert decide(plan, 600, GOOD).action == "advance"
    few = Evidence(**{**GOOD.__dict__, "compared": 499, "agreed": 499})
    waited = decide(plan, 10_000, few)
    assert waited.action == "wait" and waited.figures["agreement_at_least"]["ok"] is None


@pytest.mark.parametrize("change, guard", [
    ({"agreed": 500}, "agreement_at_least"),
    ({"candidate_correct": 200}, "accuracy_drop_at_most"),
    ({"candidate_p95_ms": 13.0}, "p95_ratio_at_most"),
    ({"errors": 2}, "error_rate_at_most"),
])
def test_a_failed_guard_rolls_back_at_once_and_is_named(change, guard):
    decision = decide(parse_promotion(PLAN, HERE), 1.0, Evidence(**{**GOOD.__dict__, **change}))
    assert decision.action == "rollback" and decision.failed == [guard]
    assert decision.figures[guard]["ok"] is False


def test_a_guard_set_to_null_is_not_checked():
    plan = parse_promotion({**PLAN, "agreement_at_least": None}, HERE)
    decision = decide(plan, 600, Evidence(**{**GOOD.__dict__, "agreed": 0}))
    assert decision.action == "advance" and "agreement_at_least" not in decision.figures
