"""Model workers' counters, kept in Redis so one scrape of the API's /metrics sees every worker.

Workers may run on other hosts, restart, or be scaled; their totals live in one Redis
hash per model (`imageclf:stats:<model>`), per version (fields `<version>|<name>`): images,
answered requests, batches, and histogram bucket counts of batch sizes and inference
seconds; and the model's busy time. imageclf/api/metrics.py turns them into Prometheus series.
"""

from __future__ import annotations

import bisect

import redis

from imageclf.core.redis_clients import text

STATS_PREFIX = "imageclf:stats:"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
INFERENCE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _bucket(bounds: tuple[float, ...], value: float) -> str:
    """The smallest bound >= value ("+Inf" past the last): each observation counts in one field."""
    index = bisect.bisect_left(bounds, value)
    return repr(float(bounds[index])) if index < len(bounds) else "+Inf"


def record_batch(pipe: redis.client.Pipeline, model: str, version: int, size: int, inference_s: float,
                 answered: int) -> None:
    """Count one model call of `size` images by `version`, `answered` of them for clients (the others are
    shadow copies); queued on `pipe`, sent with the batch's answers."""
    key, v = STATS_PREFIX + model, f"{version}|"
    pipe.hincrby(key, v + "images", size)
    pipe.hincrby(key, v + "requests", answered)
    pipe.hincrby(key, v + "batches", 1)
    pipe.hincrby(key, v + "batch_size_sum", size)
    pipe.hincrby(key, v + "batch_size_le:" + _bucket(BATCH_SIZE_BUCKETS, size), 1)
    pipe.hincrbyfloat(key, v + "inference_seconds_sum", inference_s)
    pipe.hincrby(key, v + "inference_le:" + _bucket(INFERENCE_BUCKETS_S, inference_s), 1)


#: Request latencies kept per version (the newest), for the promotion's p95 guard.
LATENCY_WINDOW = 1000


def latency_key(model: str, version: int) -> str:
    """Redis list of a version's newest request latencies in ms (queued by the API → answer stored)."""
    return f"imageclf:latency:{model}:{version}"


def record_latencies(pipe: redis.client.Pipeline, model: str, version: int, seconds: list[float]) -> None:
    """Add the latencies of a batch's clients' requests (not a job's images, not shadow copies), on `pipe`."""
    if seconds:
        key = latency_key(model, version)
        pipe.lpush(key, *(round(s * 1000, 2) for s in seconds))
        pipe.ltrim(key, 0, LATENCY_WINDOW - 1)


def record_errors(client: redis.Redis, model: str, version: int, images: int) -> None:
    """Count `images` whose model call failed (the promotion's error-rate guard reads them)."""
    client.hincrby(STATS_PREFIX + model, f"{version}|errors", images)


def record_busy(pipe: redis.client.Pipeline, model: str, seconds: float) -> None:
    """Time a model process spent on one batch: fetching pixels, the model call, preparing the answers."""
    pipe.hincrbyfloat(STATS_PREFIX + model, "busy_seconds_sum", seconds)


def read_stats(client: redis.Redis) -> dict[str, dict[str, float]]:
    """{model: {field: value}} for every model any worker has recorded."""
    stats = {}
    for key in client.scan_iter(match=STATS_PREFIX + "*", count=100):
        fields = client.hgetall(key)
        stats[text(key)[len(STATS_PREFIX):]] = {text(k): float(v) for k, v in fields.items()}
    return stats


def by_version(fields: dict[str, float]) -> dict[str, dict[str, float]]:
    """A model's fields split per version: {version: {name: value}}."""
    versions: dict[str, dict[str, float]] = {}
    for name, value in fields.items():
        if "|" in name:
            version, field = name.split("|", 1)
            versions.setdefault(version, {})[field] = value
    return versions


def cumulative(fields: dict[str, float], prefix: str, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (upper bound, cumulative count) from per-bucket counts."""
    total, buckets = 0.0, []
    for bound in [repr(float(b)) for b in bounds] + ["+Inf"]:
        total += fields.get(prefix + bound, 0.0)
        buckets.append((bound, total))
    return buckets
