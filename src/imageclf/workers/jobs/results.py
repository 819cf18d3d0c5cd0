"""A finished job's result: items in upload order, a video's frames with a label timeline, or an evaluation's
figures per version.

Pure functions over the per-item outcomes the driver gathered, so they are tested directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from itertools import combinations, groupby
from typing import Any

from imageclf.models.evaluation import Agreement, Evaluation, Prediction


def images_result(names: list[str], outcomes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Every file's outcome in upload order, with its name; a missing outcome counts as failed."""
    items = []
    for index, name in enumerate(names):
        outcome = outcomes.get(index, {"status": "FAILURE", "error": "no result was recorded"})
        items.append({"index": index, "name": name, **outcome})
    succeeded = sum(item["status"] == "SUCCESS" for item in items)
    return {"items": items, "succeeded": succeeded, "failed": len(items) - succeeded}


def evaluation_result(entries: Iterable[tuple[dict[str, Any], dict[str, Any]]], labels: list[str],
                      versions: list[int], listed: int, write_rows: Callable[[list[list[Any]]], None],
                      page: int = 1000) -> dict[str, Any]:
    """Each version's figures on the labelled images, the versions' agreement two by two, and the images that
    could not be classified, folded one entry at a time.

    `entries`: (item, outcome) for each image and version, the versions of one image next to each other (items
    carry `image`, `label` and `version`). Every `page` images' rows (file, version, true, predicted, probability)
    go to `write_rows` for the CSV download, so no list grows with the dataset except the first `listed`
    mistakes, disagreements and failures.
    """
    figures = {version: Evaluation(labels, listed) for version in versions}
    compared = {(a, b): Agreement(listed) for a, b in combinations(versions, 2)}
    failed: list[dict[str, Any]] = []
    failures = 0
    rows: list[list[Any]] = []
    for _, group in groupby(entries, key=lambda entry: entry[0]["image"]):
        answers: dict[int, Prediction] = {}
        for item, outcome in group:
            top = outcome.get("top") if outcome["status"] == "SUCCESS" else None
            if not top:
                failures += 1
                if len(failed) < listed:
                    failed.append({"name": item["name"], "version": item["version"],
                                   "error": outcome.get("error", "no prediction")})
                continue
            prediction = Prediction(item["name"], item["label"], tuple((int(c), float(p)) for c, p in top))
            figures[item["version"]].add(prediction)
            answers[item["version"]] = prediction
            rows.append([item["name"], item["version"], labels[item["label"]], labels[prediction.predicted],
                         round(prediction.probability, 6)])
        for (a, b), pair in compared.items():
            if a in answers and b in answers:
                pair.add(answers[a], answers[b])
        if len(rows) >= page:
            write_rows(rows)
            rows = []
    if rows:
        write_rows(rows)
    result: dict[str, Any] = {
        "evaluate": True,
        "versions": {str(v): figures[v].result() for v in versions},
        "failed": failed,
        "failed_count": failures,
    }
    if len(versions) > 1:
        result["agreement"] = {f"{a}-{b}": pair.result() for (a, b), pair in compared.items()}
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
