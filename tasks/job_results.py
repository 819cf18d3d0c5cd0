"""A finished job's result: items in upload order, or a video's frames with a label timeline.

Pure functions over the per-item outcomes the driver gathered, so they are tested directly.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def images_result(names: list[str], outcomes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Every file's outcome in upload order, with its name; a missing outcome counts as failed."""
    items = []
    for index, name in enumerate(names):
        outcome = outcomes.get(index, {"status": "FAILURE", "error": "no result was recorded"})
        items.append({"index": index, "name": name, **outcome})
    succeeded = sum(item["status"] == "SUCCESS" for item in items)
    return {"items": items, "succeeded": succeeded, "failed": len(items) - succeeded}


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
