"""Promotion by evidence: the controller that moves a candidate version's canary share step by step, or back to 0.

One controller acts for a model at a time, whichever API process holds that model's lock in Redis (each API
process runs the loop and competes for the models it serves and whose repository folder it sees; the others
wait, and take over within a few checks when the holder dies). Every PROMOTION_CHECK_S it reads the model's
`promotion` plan (config.json, imageclf.models.promotion_plan) and, for a rollout in progress, the evidence of
the current step's period:

- shadow comparisons of the candidate against the default on the same images (imageclf.core.shadow): the
  top-1 agreement. While it promotes, the controller has the default's interactive requests shadowed to the
  candidate (100 %), so that even at a 5 % canary every request adds evidence;
- each version's request latencies (queued by the API → answer stored, imageclf.core.stats), p95 against p95:
  the canary's own requests against the default's, in the same period and under the same load;
- labelled answers of each version in the period, from the prediction log (imageclf.core.live_quality): the
  candidate's accuracy against the default's;
- the candidate's images and failed images (imageclf.core.stats).

It moves the share by writing config.json's `traffic` and `shadow` as the control API does (the model's
workers apply it within MODEL_POLL_S). Every decision is one JSON line in the log and one entry of the model's
history in Redis (GET /models/<m>/promotion). Operators pause, resume or abort through the control API: their
request waits in the state until the controller's next check applies it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import redis
import sqlalchemy as sa

from imageclf import settings
from imageclf.core.live_quality import drift
from imageclf.core.model_records import InputLookup, ModelUnavailable, read_labels
from imageclf.core.prediction_log import predictions
from imageclf.core.redis_clients import text
from imageclf.core.shadow import pair_key
from imageclf.core.stats import LATENCY_WINDOW, STATS_PREFIX, latency_key
from imageclf.models.promotion_plan import Decision, Evidence, PromotionPlan, decide, parse_promotion
from imageclf.models.repository import RepositoryError, locked, model_dir, read_raw_config, versions, write_config
from imageclf.models.review_rules import parse_review
from imageclf.models.serving_policy import check_against, parse_policy

STATE_PREFIX = "imageclf:promotion:"
#: Redis: the versions of a model whose answers drift now (JSON list), for the review rules' `drift`.
DRIFT_PREFIX = "imageclf:drift:"
#: Redis lock per model: the process holding it acts for that model (one that serves the model and sees its folder).
_LOCK = "imageclf:promotion-controller:"
#: Decisions kept per model.
HISTORY = 1000
#: Seconds between two refreshes of the drift flags.
DRIFT_EVERY_S = 60.0
#: Operators' requests: pause, resume, abort.
ACTIONS = ("pause", "resume", "abort")
# Renew the lock only while this process holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


def state_key(model: str) -> str:
    return STATE_PREFIX + model


def history_key(model: str) -> str:
    return STATE_PREFIX + model + ":history"


def read_state(client: redis.Redis, model: str) -> dict[str, Any]:
    """The rollout's state ({} before any): status, candidate, step, share, step_started, baseline, last_check…"""
    return {text(k): json.loads(v) for k, v in client.hgetall(state_key(model)).items()}


def read_history(client: redis.Redis, model: str, count: int = 200) -> list[dict[str, Any]]:
    """The newest `count` decisions, newest first."""
    return [json.loads(line) for line in client.lrange(history_key(model), 0, count - 1)]


def request_action(client: redis.Redis, model: str, action: str, by: str) -> None:
    """An operator's pause, resume or abort, applied by the controller's next check."""
    client.hset(state_key(model), "requested", json.dumps({"action": action, "by": by, "at": time.time()}))


def read_drifting(client: redis.Redis, model: str) -> set[int]:
    raw = client.get(DRIFT_PREFIX + model)
    return set(json.loads(raw)) if raw else set()


class Controller:
    """The checks of every served model's plan; `check_all` is one round (run by the loop holding the lock)."""

    def __init__(self, client: redis.Redis, engine: Any, log: logging.Logger, token: str = "", ttl_ms: int = 0
                 ) -> None:
        self._client = client
        self._token, self._ttl_ms = token, ttl_ms  # this process' claim on each model's lock
        self._engine = engine  # () -> a SQLAlchemy engine, or None when the prediction log is off
        self._log = log
        self._drift_at = 0.0

    def check_all(self) -> None:
        refresh_drift = time.monotonic() - self._drift_at >= DRIFT_EVERY_S
        for model in settings.MODELS:
            folder = model_dir(settings.MODEL_REPOSITORY, model)
            if folder is None or not self._client.eval(_RENEW, 1, _LOCK + model, self._token, self._ttl_ms):
                continue  # not a repository model here, or another process acts for it
            try:
                raw = read_raw_config(folder)
                plan = parse_promotion(raw.get("promotion"), folder / "config.json")
                rules = parse_review(raw.get("review"), folder / "config.json")
            except RepositoryError as exc:
                self._note(model, str(exc))
                continue
            if refresh_drift and rules is not None and rules.drift:
                self._refresh_drift(model)
            if plan is not None:
                self.check(model, folder, plan)
        if refresh_drift:
            self._drift_at = time.monotonic()

    def check(self, model: str, folder: Path, plan: PromotionPlan) -> None:
        with self._client.pipeline(transaction=True) as pipe:  # taken and removed at once: none is lost
            pipe.hget(state_key(model), "requested")
            pipe.hdel(state_key(model), "requested")
            taken = pipe.execute()[0]
        requested = json.loads(taken) if taken else None
        state = read_state(self._client, model)
        if state.get("candidate") != plan.candidate:
            state = self._start(model, folder, plan, "plan")
        elif state.get("plan") != plan.describe():  # guards or steps edited: they apply from the current step
            self._set(model, plan=plan.describe())
        if requested is not None:
            state = self._operator(model, folder, plan, state, requested)
        if state.get("status") != "running":
            return
        try:
            default = InputLookup(self._client).routes_of(model).routing.default
        except ModelUnavailable:
            return
        held = time.time() - state["step_started"]
        decision = decide(plan, held, self._evidence(model, plan, default, state))
        if decision.action == "rollback":
            self._apply(model, folder, plan, 0.0, plan.dry_run)
            self._record(model, plan, "rollback", state, decision, status="rolled_back", share=0.0,
                         reason=f"guard {', '.join(decision.failed)} failed")
        elif decision.action == "advance":
            step = state["step"] + 1
            if step >= len(plan.steps) or plan.steps[step] >= 100:
                self._apply(model, folder, plan, None, plan.dry_run)
                self._record(model, plan, "promote", state, decision, status="promoted", share=100.0,
                             reason=f"version {plan.candidate} is the default")
            else:
                share = plan.steps[step]
                self._apply(model, folder, plan, share, plan.dry_run)
                self._record(model, plan, "advance", state, decision, step=step, share=share,
                             reason=f"every guard held for {held:.0f} s", baseline=self._baseline(model, plan, default))
        else:
            self._set(model, last_check={"at": time.time(), "held_s": round(held, 1), "figures": decision.figures})

    def _start(self, model: str, folder: Path, plan: PromotionPlan, why: str, by: str | None = None
               ) -> dict[str, Any]:
        """Step 0: the first share, the candidate shadowed, a fresh baseline."""
        try:
            default = InputLookup(self._client).routes_of(model).routing.default
        except ModelUnavailable as exc:
            self._note(model, f"waiting for the model: {exc}")
            return read_state(self._client, model)
        if default == plan.candidate:
            self._note(model, f"version {plan.candidate} is already the default")
            self._set(model, candidate=plan.candidate, plan=plan.describe(), status="promoted")
            return read_state(self._client, model)
        try:
            self._apply(model, folder, plan, plan.steps[0], plan.dry_run)
        except RepositoryError as exc:
            self._note(model, f"cannot start: {exc}")
            return read_state(self._client, model)
        self._client.delete(state_key(model))
        self._record(model, plan, "start", {}, None, status="running", step=0, share=plan.steps[0], by=by,
                     reason=f"{why}: canary {plan.steps[0]:g}% of version {plan.candidate} against {default}",
                     baseline=self._baseline(model, plan, default))
        return read_state(self._client, model)

    def _operator(self, model: str, folder: Path, plan: PromotionPlan, state: dict[str, Any],
                  requested: dict[str, Any]) -> dict[str, Any]:
        action, by = requested["action"], requested.get("by")
        status = state.get("status")
        if action == "pause" and status == "running":
            self._record(model, plan, "pause", state, None, status="paused", by=by, reason="paused by an operator")
        elif action == "resume" and status == "paused":
            self._record(model, plan, "resume", state, None, status="running", by=by, step_started=time.time(),
                         reason="resumed by an operator")
        elif action == "resume" and status in ("rolled_back", "aborted"):
            return self._start(model, folder, plan, "resumed by an operator", by)
        elif action == "abort" and status in ("running", "paused"):
            self._apply(model, folder, plan, 0.0, plan.dry_run)
            self._record(model, plan, "abort", state, None, status="aborted", share=0.0, by=by,
                         reason="aborted by an operator")
        else:
            self._note(model, f"{action} by {by} ignored: the rollout is {status or 'not started'}")
        return read_state(self._client, model)

    def _apply(self, model: str, folder: Path, plan: PromotionPlan, share: float | None, dry_run: bool) -> None:
        """The candidate's share in config.json (None: it becomes the default), shadowed while 0 < share < 100."""
        if dry_run:
            return
        with locked(folder):
            raw = read_raw_config(folder)
            traffic = dict(raw.get("traffic") or {})
            key = str(plan.candidate)
            if share is None:
                traffic.pop(key, None)
                traffic["default"] = plan.candidate
            else:
                traffic[key] = share
            raw["traffic"] = traffic
            shadow = raw.get("shadow")
            ours = isinstance(shadow, dict) and str(shadow.get("version")) == key
            if share is not None and 0 < share < 100:
                raw["shadow"] = {"version": plan.candidate, "share": 100}
            elif ours:
                raw.pop("shadow")
            policy = parse_policy(raw, folder / "config.json")
            check_against(policy, versions(folder), folder / "config.json")
            write_config(folder, raw)

    def _baseline(self, model: str, plan: PromotionPlan, default: int) -> dict[str, Any]:
        """The cumulative counters at a step's start: the step's evidence is what they gained since."""
        compared, agreed = self._client.hmget(pair_key(model, plan.candidate, default), "compared", "agreed")
        images, errors, requests, default_requests = self._client.hmget(
            STATS_PREFIX + model, f"{plan.candidate}|images", f"{plan.candidate}|errors", f"{plan.candidate}|requests",
            f"{default}|requests")
        return {"default": default, "compared": int(compared or 0), "agreed": int(agreed or 0),
                "images": int(float(images or 0)), "errors": int(float(errors or 0)),
                "requests": int(float(requests or 0)), "default_requests": int(float(default_requests or 0))}

    def _evidence(self, model: str, plan: PromotionPlan, default: int, state: dict[str, Any]) -> Evidence:
        base = state.get("baseline") or {}
        now = self._baseline(model, plan, default)
        if base.get("default") != default:  # the default changed under the rollout: count from here
            self._set(model, baseline=now)
            base = now
        requests = now["requests"] - base["requests"]
        labelled = self._labelled(model, (plan.candidate, default), state["step_started"])
        return Evidence(
            compared=now["compared"] - base["compared"], agreed=now["agreed"] - base["agreed"],
            candidate_labelled=labelled[plan.candidate][0], candidate_correct=labelled[plan.candidate][1],
            default_labelled=labelled[default][0], default_correct=labelled[default][1],
            candidate_latencies=requests, candidate_p95_ms=self._p95(model, plan.candidate, requests),
            default_p95_ms=self._p95(model, default, now["default_requests"] - base["default_requests"]),
            images=now["images"] - base["images"], errors=now["errors"] - base["errors"])

    def _p95(self, model: str, version: int, new: int) -> float | None:
        """The p95 of a version's request latencies in the step (its newest `new`, at most LATENCY_WINDOW)."""
        if new <= 0:
            return None
        found = self._client.lrange(latency_key(model, version), 0, min(new, LATENCY_WINDOW) - 1)
        return round(float(np.percentile([float(v) for v in found], 95)), 2) if found else None

    def _labelled(self, model: str, versions_of: tuple[int, int], since: float) -> dict[int, tuple[int, int]]:
        """(labelled, right) of each version's answers given since `since` (the step's start)."""
        found = {v: (0, 0) for v in versions_of}
        engine = self._engine()
        if engine is None:
            return found
        query = sa.select(predictions.c.version, sa.func.count(),
                          sa.func.count().filter(predictions.c.top_ids[1] == predictions.c.label)).where(
            predictions.c.model == model, predictions.c.version.in_(versions_of), predictions.c.label.is_not(None),
            predictions.c.at >= datetime.fromtimestamp(since, timezone.utc)).group_by(predictions.c.version)
        with engine.connect() as connection:
            for version, count, right in connection.execute(query):
                found[version] = (count, right)
        return found

    def _refresh_drift(self, model: str) -> None:
        engine, labels = self._engine(), read_labels(self._client, model)
        if engine is None or not labels:
            return
        report = drift(engine, model, len(labels), timedelta(hours=24))
        self._client.set(DRIFT_PREFIX + model, json.dumps(sorted(int(v) for v, r in report.items() if r["drifted"])),
                         ex=int(4 * DRIFT_EVERY_S))

    def _record(self, model: str, plan: PromotionPlan, action: str, state: dict[str, Any],
                decision: Decision | None, reason: str, by: str | None = None, **fields: Any) -> None:
        """One decision: the state's new fields, a history entry and a JSON log line."""
        now = time.time()
        step = fields.get("step", state.get("step", 0))
        entry = {"event": "promotion", "model": model, "action": action, "candidate": plan.candidate, "step": step,
                 "share": fields.get("share", state.get("share")), "reason": reason, "at": now,
                 "dry_run": plan.dry_run, **({"by": by} if by else {}),
                 **({"guard": decision.failed[0], "failed": decision.failed} if decision and decision.failed else {}),
                 **({"figures": decision.figures} if decision else {})}
        update = {"candidate": plan.candidate, "plan": plan.describe(), "step": step, "updated_at": now, **fields}
        if "share" in fields and action != "resume":
            update.setdefault("step_started", now)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(state_key(model), mapping={k: json.dumps(v) for k, v in update.items()})
            pipe.hdel(state_key(model), "last_check", "note")
            pipe.lpush(history_key(model), json.dumps(entry))
            pipe.ltrim(history_key(model), 0, HISTORY - 1)
            pipe.execute()
        self._log.info(json.dumps(entry))

    def _note(self, model: str, note: str) -> None:
        """What holds the rollout up without a decision (the model not ready, an invalid plan), logged once."""
        if read_state(self._client, model).get("note") != note:
            self._log.info(json.dumps({"event": "promotion", "model": model, "action": "note", "reason": note}))
            self._set(model, note=note)

    def _set(self, model: str, **fields: Any) -> None:
        self._client.hset(state_key(model), mapping={k: json.dumps(v) for k, v in fields.items()})


def start_controller(client: redis.Redis, engine: Any, log: logging.Logger) -> None:
    """In an API process: the controller's loop, acting for each model whose lock this process holds."""
    ttl_ms = int(max(10.0, 3 * settings.PROMOTION_CHECK_S) * 1000)
    controller = Controller(client, engine, log, uuid.uuid4().hex, ttl_ms)

    def loop() -> None:
        away = False
        while True:
            try:
                controller.check_all()
                away = False
            except Exception as exc:  # Redis or the database away, a config mid-edit: the next round tries again
                if not away:
                    log.warning(json.dumps({"event": "promotion", "action": "error",
                                            "reason": f"{type(exc).__name__}: {exc}"[:300]}))
                away = True
            time.sleep(settings.PROMOTION_CHECK_S)

    threading.Thread(target=loop, name="promotion-controller", daemon=True).start()
