"""Ground truth that arrives after the answer, and what it says about each version: feedback (labels on logged
answers), live quality per version (the offline evaluation's own figures, imageclf.models.evaluation, over the
labelled answers of a window) and drift (the answers' distributions against a reference window, no labels and
no training needed).

Drift compares three distributions of a version's answers in the window with those of its reference (by
default its first DRIFT_REFERENCE_SIZE answers; `POST /models/<m>/reference` starts it again now): the top-1
confidence (10 equal bins over [0, 1]), the entropy (10 equal bins over [0, ln classes]) and the predicted
classes' frequencies. Each pair is scored by the population stability index, PSI = Σ (w − r) ln(w / r) over
the bins (empty bins smoothed by 1e-4), and flagged at PSI ≥ 0.2, the conventional "significant shift" line
(< 0.1: none, 0.1-0.2: moderate). Either window with fewer than DRIFT_MIN_ANSWERS answers gives no verdict.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from imageclf.core.prediction_log import drift_references, job_item_id, predictions
from imageclf.models.evaluation import Evaluation, Prediction

#: The reference window's size: a version's first answers (or those after a reset).
DRIFT_REFERENCE_SIZE = 2000
#: Fewer answers than this in either window: no verdict.
DRIFT_MIN_ANSWERS = 200
#: PSI at which a signal is flagged.
DRIFT_THRESHOLD = 0.2
_BINS = 10
_SMOOTH = 1e-4


class FeedbackError(Exception):
    """A label that cannot be taken: `status` (400, 404) and the message a client reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def class_id(label: Any, labels: list[str]) -> int:
    """The class id a label names (its name, or its id as a number or a string of digits); FeedbackError 400."""
    if isinstance(label, bool) or label is None:
        raise FeedbackError(400, f"'label' must be a class name or id, got {label!r}")
    if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
        number = int(label)
        if 0 <= number < len(labels):
            return number
        raise FeedbackError(400, f"class id {number} is not one of the model's {len(labels)} classes")
    if isinstance(label, str):
        matches = [i for i, name in enumerate(labels) if name == label.strip()]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise FeedbackError(400, f"{label!r} names classes {matches}: give the class id")
    raise FeedbackError(400, f"{str(label)[:100]!r} is not a class of the model")


def logged_id(entry: dict[str, Any], item_of: Callable[[str, str], int | None]) -> str:
    """The logged id an entry names: `id`, or `job` and `item` (an index, or a file name `item_of` resolves)."""
    if isinstance(entry.get("id"), str) and entry["id"]:
        return entry["id"]
    job, item = entry.get("job"), entry.get("item")
    if not (isinstance(job, str) and job):
        raise FeedbackError(400, "each entry names a request ('id') or a job's image ('job' and 'item')")
    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
        return job_item_id(job, item)
    if isinstance(item, str) and item:
        index = int(item) if item.isdigit() else item_of(job, item)
        if index is None:
            raise FeedbackError(404, f"job {job!r} has no file named {item[:200]!r}")
        return job_item_id(job, index)
    raise FeedbackError(400, "'item' must be the image's index in its job, or its file name")


def label_studio_entries(tasks: Any) -> tuple[list[dict[str, Any]], int]:
    """The labels of a Label Studio JSON export of tasks this service exported (`data.imageclf_id`): each task's
    latest annotation that was not cancelled, its first choice; and how many tasks had none (skipped)."""
    if not isinstance(tasks, list):
        raise FeedbackError(400, "a Label Studio export is a JSON list of tasks")
    entries, skipped = [], 0
    for number, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("imageclf_id"), str):
            raise FeedbackError(400, f"task {number} has no data.imageclf_id: import tasks exported by GET "
                                     "/review/export?format=labelstudio")
        choices = [value["choices"][0]
                   for annotation in task.get("annotations") or [] if not annotation.get("was_cancelled")
                   for result in annotation.get("result") or []
                   if isinstance(value := result.get("value"), dict) and value.get("choices")]
        if not choices:
            skipped += 1
            continue
        entries.append({"id": data["imageclf_id"], "label": choices[-1]})
    return entries, skipped


def label(engine: sa.Engine, entries: list[dict[str, Any]], owner: str | None,
          labels_of: Callable[[str], list[str] | None], item_of: Callable[[str, str], int | None]) -> list[dict]:
    """Set the label of every entry's logged answers (every version that answered it; a repeated label replaces
    the earlier one), all or none: FeedbackError for the first that cannot be taken. `owner`: the caller's key
    id (None without API keys); a key labels only what it asked."""
    now = datetime.now(timezone.utc)
    resolved = []
    with engine.begin() as connection:
        for entry in entries:
            request_id = logged_id(entry, item_of)
            found = connection.execute(sa.select(predictions.c.model, predictions.c.key_id).where(
                predictions.c.request_id == request_id).limit(1)).first()
            if found is None or (owner is not None and found.key_id != owner):
                raise FeedbackError(404, f"no logged answer {request_id!r}" + (" for this key" if owner else "")
                                    + " (unknown, not sampled by PREDICTION_LOG_SHARE, or past PREDICTION_LOG_DAYS)")
            labels = labels_of(found.model)
            if not labels:
                raise FeedbackError(404, f"the classes of model {found.model!r} are not known (is it served?)")
            class_number = class_id(entry.get("label"), labels)
            connection.execute(predictions.update().where(predictions.c.request_id == request_id).values(
                label=class_number, labelled_at=now))
            resolved.append({"id": request_id, "model": found.model, "label": labels[class_number],
                             "class_id": class_number})
    return resolved


def parse_window(window: str | None, last: str | None) -> tuple[timedelta | None, int | None]:
    """`window` ("24h", "30m", "7d", "90s") or `last` (a count of labelled answers); default 24 hours."""
    if last is not None:
        if not last.isdigit() or int(last) < 1:
            raise FeedbackError(400, f"'last' must be a positive count of labelled answers, got {last[:40]!r}")
        return None, int(last)
    window = window or "24h"
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = window[:-1], window[-1:]
    try:
        seconds = float(number) * units[unit]
    except (KeyError, ValueError):
        raise FeedbackError(400, f"'window' must be a number and s, m, h or d (like 24h), got {window[:40]!r}"
                            ) from None
    if not 0 < seconds <= 366 * 86400:
        raise FeedbackError(400, f"'window' must be between 1 s and 366 days, got {window[:40]!r}")
    return timedelta(seconds=seconds), None


def quality(engine: sa.Engine, model: str, labels: list[str], window: timedelta | None, last: int | None
            ) -> dict[str, Any]:
    """Per version: the offline evaluation's figures over its labelled answers in `window`, or its `last` ones."""
    labelled = sa.select(predictions.c.request_id, predictions.c.label, predictions.c.top_ids,
                         predictions.c.top_probs).where(predictions.c.model == model, predictions.c.label.is_not(None))
    if window is not None:
        labelled = labelled.where(predictions.c.labelled_at >= datetime.now(timezone.utc) - window)
    out = {}
    with engine.connect() as connection:
        versions = [row[0] for row in connection.execute(
            sa.select(predictions.c.version).distinct().where(predictions.c.model == model,
                                                             predictions.c.label.is_not(None)))]
        for version in sorted(versions):
            query = labelled.where(predictions.c.version == version).order_by(predictions.c.labelled_at.desc())
            if last is not None:
                query = query.limit(last)
            evaluation = Evaluation(labels, listed=20)
            for row in connection.execute(query):
                evaluation.add(Prediction(row.request_id, row.label, tuple(zip(row.top_ids, row.top_probs))))
            if evaluation.images:
                out[str(version)] = {"labelled": evaluation.images, **evaluation.result()}
    return out


def accuracy_over_time(engine: sa.Engine, model: str, window: timedelta, buckets: int = 24
                       ) -> dict[str, list[dict[str, Any]]]:
    """Per version: the labelled answers and the top-1 accuracy of each of `buckets` equal periods of `window`,
    by when they were answered (a period without labels is left out)."""
    now = datetime.now(timezone.utc)
    start, width = now - window, window / buckets
    bucket = sa.func.floor(sa.extract("epoch", predictions.c.at - start) / width.total_seconds()).label("bucket")
    query = sa.select(predictions.c.version, bucket, sa.func.count(),
                      sa.func.count().filter(predictions.c.top_ids[1] == predictions.c.label)).where(
        predictions.c.model == model, predictions.c.label.is_not(None), predictions.c.at >= start).group_by(
        predictions.c.version, bucket).order_by(predictions.c.version, bucket)
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        for version, number, labelled, right in connection.execute(query):
            out.setdefault(str(version), []).append({
                "start": (start + width * int(min(number, buckets - 1))).isoformat(), "labelled": labelled,
                "accuracy": round(right / labelled, 6)})
    return out


def labelled_counts(engine: sa.Engine, window: timedelta) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(model, version) -> (labelled answers kept, those labelled in the window, the right ones among them), in
    one pass: the Prometheus figures."""
    recent = predictions.c.labelled_at >= datetime.now(timezone.utc) - window
    query = sa.select(predictions.c.model, predictions.c.version, sa.func.count(), sa.func.count().filter(recent),
                      sa.func.count().filter(recent, predictions.c.top_ids[1] == predictions.c.label)).where(
        predictions.c.label.is_not(None)).group_by(predictions.c.model, predictions.c.version)
    with engine.connect() as connection:
        return {(row[0], row[1]): (row[2], row[3], row[4]) for row in connection.execute(query)}


def reset_reference(engine: sa.Engine, model: str) -> list[int]:
    """Start the drift reference of every logged version of `model` again, from now; the versions reset."""
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        versions = [row[0] for row in connection.execute(
            sa.select(predictions.c.version).distinct().where(predictions.c.model == model))]
        for version in versions:
            statement = sa.dialects.postgresql.insert(drift_references).values(model=model, version=version, since=now)
            connection.execute(statement.on_conflict_do_update(index_elements=["model", "version"],
                                                               set_={"since": now}))
    return sorted(versions)


def drift(engine: sa.Engine, model: str, classes: int, window: timedelta) -> dict[str, Any]:
    """Per version that answered in the window: each signal's PSI against the reference, the flag, and both
    histograms (counted by PostgreSQL: no answer leaves the database)."""
    now = datetime.now(timezone.utc)
    bound = math.log(max(2, classes))
    answers = sa.select(predictions.c.confidence, predictions.c.entropy,
                        predictions.c.top_ids[1].label("predicted")).where(predictions.c.model == model,
                                                                           predictions.c.route != "shadow")
    out: dict[str, Any] = {}
    with engine.connect() as connection:
        versions = [row[0] for row in connection.execute(sa.select(predictions.c.version).distinct().where(
            predictions.c.model == model, predictions.c.at >= now - window))]
        for version in sorted(versions):
            since = connection.execute(sa.select(drift_references.c.since).where(
                drift_references.c.model == model, drift_references.c.version == version)).scalar()
            mine = answers.where(predictions.c.version == version)
            reference = (mine.where(predictions.c.at >= since) if since is not None else mine).order_by(
                predictions.c.at).limit(DRIFT_REFERENCE_SIZE)
            current = mine.where(predictions.c.at >= now - window)
            out[str(version)] = _compare(_counts(connection, reference, bound), _counts(connection, current, bound),
                                         since)
    return out


def _counts(connection: sa.Connection, answers: sa.Select, bound: float) -> dict[str, Any]:
    """The answers' confidence and entropy histograms (_BINS equal bins) and predicted-class counts."""
    sub = answers.subquery()
    found: dict[str, Any] = {"answers": 0}
    for name, column, top in (("confidence", sub.c.confidence, 1.0), ("entropy", sub.c.entropy, bound)):
        histogram = [0] * _BINS
        for bucket, n in connection.execute(sa.select(sa.func.width_bucket(column, 0.0, top, _BINS), sa.func.count())
                                            .group_by(sa.text("1"))):
            histogram[min(max(int(bucket), 1), _BINS) - 1] += n  # 0 below, _BINS + 1 at the top edge
        found[name] = histogram
    found["classes"] = Counter({int(c): n for c, n in connection.execute(
        sa.select(sub.c.predicted, sa.func.count()).group_by(sub.c.predicted)) if c is not None})
    found["answers"] = sum(found["confidence"])
    return found


def _compare(reference: dict[str, Any], current: dict[str, Any], since: datetime | None) -> dict[str, Any]:
    signals: dict[str, dict[str, Any]] = {}
    for name in ("confidence", "entropy"):
        signals[name] = {"psi": _psi(reference[name], current[name]), "reference": reference[name],
                         "window": current[name]}
    top = [c for c, _ in reference["classes"].most_common(20)]
    ref_classes, cur_classes = _frequencies(reference["classes"], top), _frequencies(current["classes"], top)
    signals["classes"] = {"psi": _psi(ref_classes, cur_classes), "classes": [*map(str, top), "other"],
                          "reference": ref_classes, "window": cur_classes}
    enough = reference["answers"] >= DRIFT_MIN_ANSWERS and current["answers"] >= DRIFT_MIN_ANSWERS
    for signal in signals.values():
        psi = signal["psi"]
        signal["drifted"] = None if not enough or psi is None else psi >= DRIFT_THRESHOLD
    return {"reference_answers": reference["answers"], "window_answers": current["answers"],
            "reference_since": since.isoformat() if since else None, "threshold": DRIFT_THRESHOLD, "bins": _BINS,
            "drifted": any(s["drifted"] for s in signals.values()) if enough else None, "signals": signals}


def _frequencies(counted: Counter, classes: list[int]) -> list[int]:
    kept = [counted[c] for c in classes]
    return [*kept, sum(counted.values()) - sum(kept)]


def _psi(reference: list[int], current: list[int]) -> float | None:
    """The population stability index of two histograms over the same bins (None when either is empty)."""
    total_ref, total_cur = sum(reference), sum(current)
    if not total_ref or not total_cur:
        return None
    psi = 0.0
    for r, c in zip(reference, current):
        r_share, c_share = max(r / total_ref, _SMOOTH), max(c / total_cur, _SMOOTH)
        psi += (c_share - r_share) * math.log(c_share / r_share)
    return round(psi, 4)
