"""A finished job's result: items in upload order, a video's frames with a label timeline, or an evaluation's
figures per version.

Pure functions over the per-item outcomes the driver gathered, so they are tested directly.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

from models.evaluation import Evaluation, Prediction, agreement


def images_result(names: list[str], outcomes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Every file's outcome in upload order, with its name; a missing outcome counts as failed."""
    items = []
    for index, name in enumerate(names):
        outcome = outcomes.get(index, {"status": "FAILURE", "error": "no result was recorded"})
        items.append({"index": index, "name": name, **outcome})
    succeeded = sum(item["status"] == "SUCCESS" for item in items)
    return {"items": items, "succeeded": succeeded, "failed": len(items) - succeeded}


def evaluation_result(items: list[dict[str, Any]], outcomes: dict[int, dict[str, Any]], labels: list[str],
                      versions: list[int]) -> dict[str, Any]:
    """Each version's figures on the labelled images (items: one per image and version, with `label` and
    `version`), the versions' agreement two by two, the images that could not be classified, and one row per
    image and version (file, version, true, predicted, probability) for the CSV download."""
    figures = {version: Evaluation(labels) for version in versions}
    answers: dict[int, dict[str, Prediction]] = {version: {} for version in versions}
    rows: list[list[Any]] = []
    failed = []
    for index, item in enumerate(items):
        outcome = outcomes.get(index, {"status": "FAILURE", "error": "no result was recorded"})
        if outcome["status"] != "SUCCESS" or not outcome.get("predictions"):
            failed.append({"name": item["name"], "version": item["version"], "error": outcome.get("error", "")})
            continue
        top = tuple((p["class_id"], p["probability"]) for p in outcome["predictions"])
        prediction = Prediction(item["name"], item["label"], top)
        figures[item["version"]].add(prediction)
        answers[item["version"]][item["name"]] = prediction
        rows.append([item["name"], item["version"], labels[item["label"]], labels[prediction.predicted],
                     round(prediction.probability, 6)])
    result: dict[str, Any] = {
        "evaluate": True,
        "versions": {str(v): figures[v].result() for v in versions},
        "failed": failed,
        "rows": rows,
    }
    if len(versions) > 1:
        result["agreement"] = {f"{a}-{b}": agreement(answers[a], answers[b]) for a, b in combinations(versions, 2)}
    return result


def video_result(info: dict[str, Any], outcomes: dict[int, dict[str, Any]],
                 decode_error: str | None = None) -> dict[str, Any]:
    """Classified frames in time order, frames that failed, and the summary of the top-1 labels."""
    ordered = [outcomes[i] for i in sorted(outcomes)]
    frames = [{"t": o["t"], "frame": o["frame"], "predictions": o["predictions"],
               "model_version": o.get("model_version")} for o in ordered if o["status"] == "SUCCESS"]
    failed = [{"t": o["t"], "frame": o["frame"], "error": o.get("error", "")}
              for o in ordered if o["status"] != "SUCCESS"]
    result: dict[str, Any] = {
        "video": info,
        "frames": frames,
        "failed_frames": failed,
        "summary": summarize(frames, info["duration_s"]),
    }
    if decode_error:
        result["decode_error"] = decode_error
    return result


def summarize(frames: list[dict[str, Any]], duration_s: float) -> dict[str, Any] | None:
    """The most frequent top-1 label, its share of the frames, and the runs of equal top-1 labels.

    A segment lasts from its first frame's time to the next segment's first frame
    (the last one to the end of the video). None when no frame was classified.
    """
    labelled = [(f["t"], f["predictions"][0]["class_id"], f["predictions"][0]["label"])
                for f in frames if f["predictions"]]
    if not labelled:
        return None
    (class_id, label), count = Counter((cid, name) for _, cid, name in labelled).most_common(1)[0]
    segments: list[dict[str, Any]] = []
    for t, cid, name in labelled:
        if segments and segments[-1]["class_id"] == cid:
            segments[-1]["frames"] += 1
            continue
        if segments:
            segments[-1]["end"] = t
        segments.append({"label": name, "class_id": cid, "start": t, "end": None, "frames": 1})
    segments[-1]["end"] = round(max(duration_s, segments[-1]["start"]), 6)
    return {"label": label, "class_id": class_id, "share": round(count / len(labelled), 4),
            "frames": len(labelled), "segments": segments}
