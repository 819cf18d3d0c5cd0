"""Shadow traffic: a share of the default version's requests computed again by another version, and compared.

The API marks a request `shadow: <version>` (imageclf.models.serving_policy). The worker that answers it
then queues the same pixels for the shadow version on the model's bulk lane, in the round trip
that stores the answer, with what the default version said (top-1 class, its probability, its
time per image): the client never waits for the shadow, and a shadow version slower than the
default delays only bulk work. When the bulk lane is already long (SHADOW_MAX_QUEUED), the copy is
skipped and counted rather than piled up.

The shadow's answer is never returned or stored: its batch adds one comparison per request to a
rolling record per pair of versions in Redis (requests compared, top-1 agreement, mean |Δp| of
the default's top-1 class, the last WINDOW times per image of each version).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
import redis

from imageclf.core.payloads import task_message
from imageclf.core.redis_clients import text

SHADOW_PREFIX = "imageclf:shadow:"
#: Per-image inference times kept for the percentiles (the newest).
WINDOW = 1000
#: A pair's record is forgotten after this long without a comparison.
RECORD_TTL_S = 7 * 86400

# KEYS: the bulk queue, the pair's record; ARGV: the queue limit, the message. Queued (1) or counted as skipped (0).
_QUEUE_SHADOW = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[2], 'skipped', 1)
  return 0
end
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""


def pair_key(model: str, version: int, against: int) -> str:
    """The record of shadow `version` compared against the default version `against`."""
    return f"{SHADOW_PREFIX}{model}:{version}:{against}"


def queue_shadow(pipe: redis.client.Pipeline, celery: Any, model: str, queue: str, limit: int, kwargs: dict[str, Any],
                 row: np.ndarray, version: int, per_image_ms: float, request_id: str = "") -> None:
    """Queue (on `pipe`) the shadow copy of an answered request (`request_id`): its pixels, for
    `kwargs['shadow']`."""
    shadow = int(kwargs["shadow"])
    class_id = int(np.argmax(row))
    copy = {"pixels_key": kwargs["pixels_key"], "size": kwargs.get("size"), "top": 1, "sent_at": time.time(),
            "version": shadow, "pinned": True,
            "compare": {"version": version, "class_id": class_id, "probability": float(row[class_id]),
                        "inference_ms": per_image_ms, "id": request_id, "key": kwargs.get("key")}}
    message = task_message(celery, f"shadow-{uuid.uuid4()}", copy, queue, repr({"shadow_of": version,
                                                                              "version": shadow}))
    pipe.eval(_QUEUE_SHADOW, 2, queue, pair_key(model, shadow, version), limit, message)


def record_comparison(pipe: redis.client.Pipeline, model: str, compare: dict[str, Any], version: int,
                      row: np.ndarray, per_image_ms: float) -> None:
    """Add one shadow answer (`row`, by `version`) to its pair's record, on `pipe`."""
    key = pair_key(model, version, int(compare["version"]))
    class_id = int(compare["class_id"])
    pipe.hincrby(key, "compared", 1)
    pipe.hincrby(key, "agreed", int(int(np.argmax(row)) == class_id))
    pipe.hincrbyfloat(key, "abs_dp_sum", abs(float(row[class_id]) - float(compare["probability"])))
    pipe.hset(key, "updated_at", time.time())
    pipe.lpush(key + ":times", json.dumps([round(float(compare["inference_ms"]), 3), round(per_image_ms, 3)]))
    pipe.ltrim(key + ":times", 0, WINDOW - 1)
    pipe.expire(key, RECORD_TTL_S)
    pipe.expire(key + ":times", RECORD_TTL_S)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def read_comparisons(client: redis.Redis, model: str) -> list[dict[str, Any]]:
    """Every pair's record for `model`: {version, against, compared, top1_agreement, mean_abs_dp, skipped,
    inference_ms_per_image: {version: {p50, p95}, against: {p50, p95}}}."""
    prefix = f"{SHADOW_PREFIX}{model}:"
    keys = sorted(k for k in client.scan_iter(match=prefix + "*", count=1000) if not k.endswith(b":times"))
    pairs = []
    for key in keys:
        version, against = (int(p) for p in text(key)[len(prefix):].split(":"))
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.lrange(key + b":times", 0, -1)
            fields, times = pipe.execute()
        record = {k.decode(): float(v) for k, v in fields.items()}
        compared = int(record.get("compared", 0))
        samples = [json.loads(t) for t in times]
        pairs.append({
            "version": version, "against": against, "compared": compared,
            "top1_agreement": round(record.get("agreed", 0) / compared, 6) if compared else None,
            "mean_abs_dp": round(record.get("abs_dp_sum", 0) / compared, 6) if compared else None,
            "skipped": int(record.get("skipped", 0)),
            "inference_ms_per_image": {
                str(against): {"p50": _percentile([s[0] for s in samples], 50),
                               "p95": _percentile([s[0] for s in samples], 95)},
                str(version): {"p50": _percentile([s[1] for s in samples], 50),
                               "p95": _percentile([s[1] for s in samples], 95)}},
            "updated_at": record.get("updated_at"),
        })
    return pairs
