"""GET /metrics in Prometheus' format, and one structured log line per request.

Request counts and latencies are recorded by each API process; under gunicorn
(several processes) prometheus_client's multiprocess mode adds them up when
PROMETHEUS_MULTIPROC_DIR is set (`make run` sets it). Queue depths, live workers
and the workers' own batch counters are read from Redis at scrape time, so one
scrape of any API process shows the whole service.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import redis
import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from imageclf import settings
from imageclf.api.auth import ANONYMOUS
from imageclf.core import database
from imageclf.core.live_quality import drift, labelled_counts
from imageclf.core.model_records import read_labels
from imageclf.core.prediction_log import DROPPED_KEY
from imageclf.core.readiness import live_workers
from imageclf.core.redis_clients import text
from imageclf.core.request_watch import count_resent
from imageclf.core.shadow import read_comparisons
from imageclf.core.stats import BATCH_SIZE_BUCKETS, INFERENCE_BUCKETS_S, by_version, cumulative, read_stats
from imageclf.workers.jobs.store import bulk_in_flight_key, read_resumed

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("imageclf_http_requests", "HTTP requests answered, by route, method, status and the model and "
                   "version the request went to ('' where none)", ["route", "method", "status", "model", "version"])
LATENCY = Histogram("imageclf_http_request_seconds", "Time to answer an HTTP request, by route, model and version",
                    ["route", "model", "version"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
#: Requests per API key, by the key's id (a hash: never the key itself) and status.
KEY_REQUESTS = Counter("imageclf_key_requests", "HTTP requests answered per API key, by the key's id (the first "
                       "32 hex digits of its SHA-256) and status", ["key_id", "status"])
CACHE_REQUESTS = Counter("imageclf_cache_requests", "POST /predict requests looked up in the response cache "
                         "(CACHE_TTL_S), by model and result (hit or miss)", ["model", "result"])
#: CPU the request's own thread spent (parsing, decoding, queueing, encoding): what an API process pays per
#: request, apart from the time it waits for the model.
CPU = Histogram("imageclf_http_request_cpu_seconds", "CPU time of the thread that answered an HTTP request, by route",
                ["route"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))

#: The API process's own metrics (prometheus_client; added up over gunicorn's processes).
PROCESS_METRICS = (REQUESTS, LATENCY, KEY_REQUESTS, CACHE_REQUESTS, CPU)
#: The metrics read from Redis at each scrape (_ServiceCollector; the workers write their figures there): name →
#: (family, help, labels). The one declaration of each, for /metrics and for the documentation's Metrics page.
SERVICE_METRICS: dict[str, tuple[type, str, list[str]]] = {
    "imageclf_redis_up": (GaugeMetricFamily, "Whether Redis answered this scrape", []),
    "imageclf_queue_depth": (GaugeMetricFamily, "Tasks waiting in a queue", ["queue"]),
    "imageclf_bulk_in_flight": (GaugeMetricFamily, "Job images and frames sent to a model and not yet gathered",
                                ["model"]),
    "imageclf_workers": (GaugeMetricFamily, "Live worker processes", ["role", "model"]),
    "imageclf_model_version_workers": (GaugeMetricFamily, "Live model worker processes serving each version (two "
                                       "versions show a rollout in progress)", ["model", "version"]),
    "imageclf_worker_memory_bytes": (GaugeMetricFamily, "Resident memory of each live worker process (its last "
                                     "heartbeat)", ["role", "model", "worker"]),
    "imageclf_shadow_agreement_ratio": (GaugeMetricFamily, "Share of shadow requests on which `version` gave the "
                                        "same top-1 class as the default version `against`",
                                        ["model", "version", "against"]),
    "imageclf_images_classified": (CounterMetricFamily, "Images and frames run through the model (shadow copies "
                                   "included)", ["model", "version"]),
    "imageclf_batch_size": (HistogramMetricFamily, "Requests per model call", ["model", "version"]),
    "imageclf_inference_seconds": (HistogramMetricFamily, "Seconds per model call", ["model", "version"]),
    "imageclf_jobs_resumed": (CounterMetricFamily, "Jobs taken up again by a decoder, by reason: `driver_died` (the "
                              "process running a step was killed; its requeued step resumed it), `stalled` (no "
                              "progress for JOB_STALL_S and no step running: the stall sweep sent its step again), "
                              "`items_lost` (items sent, then lost with a Redis that died before writing them to "
                              "disk: sent again)",
                              ["reason"]),
    "imageclf_requests_resent": (CounterMetricFamily, "Requests whose task message was lost (taken by a worker "
                                 "killed before it recorded it, or with a failed-over Redis master) and that the "
                                 "stall sweep queued again", []),
    "imageclf_model_busy_seconds": (CounterMetricFamily, "Seconds model processes spent on batches (fetch pixels, "
                                    "model call, store answers); its rate over the model workers is their busy "
                                    "ratio", ["model"]),
    "imageclf_prediction_log_dropped": (CounterMetricFamily, "Prediction log rows a model worker dropped: its "
                                        "buffer (PREDICTION_LOG_BUFFER) was full while the database was away",
                                        ["model"]),
    "imageclf_live_accuracy": (GaugeMetricFamily, "Top-1 accuracy of a version over the answers labelled in the "
                               "last 24 hours (POST /feedback)", ["model", "version"]),
    "imageclf_labelled": (CounterMetricFamily, "Logged answers of a version that carry a label (within "
                          "PREDICTION_LOG_DAYS)", ["model", "version"]),
    "imageclf_drift": (GaugeMetricFamily, "Population stability index of a version's answers in the last 24 hours "
                       "against its reference window, per signal (confidence, entropy, classes); 0.2 and above is "
                       "flagged", ["model", "version", "signal"]),
}


def _family(name: str) -> Any:
    kind, documentation, labels = SERVICE_METRICS[name]
    return kind(name, documentation, labels=labels)


request_log = logging.getLogger("imageclf.requests")


def line_log(logger: logging.Logger) -> logging.Logger:
    """`logger` writing each message as one line on stderr, whatever the root logger does (gunicorn's).

    The request threads only queue their lines; one thread of the process writes them. Written by each request
    thread itself, the stream handler's lock was where a busy API's threads queued up behind one another (under
    a key's overload, half the samples of request handling, py-spy; docs/benchmarks/quotas.md).
    """
    if not logger.handlers:
        lines: queue.SimpleQueue = queue.SimpleQueue()
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        writer = logging.handlers.QueueListener(lines, stream)
        writer.start()
        atexit.register(writer.stop)  # the lines still queued are written before the process ends
        logger.addHandler(logging.handlers.QueueHandler(lines))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def init_metrics(app: Flask) -> None:
    """Time every request, count it, log it as one JSON line; serve /metrics."""
    line_log(request_log)

    @app.before_request
    def _start_clock() -> None:
        g.started = time.perf_counter()
        g.cpu_started = time.thread_time()

    @app.after_request
    def _count(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        cpu_seconds = time.thread_time() - g.get("cpu_started", time.thread_time())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        model, version = str(g.get("model") or ""), str(g.get("model_version") or "")
        REQUESTS.labels(route, request.method, str(response.status_code), model, version).inc()
        LATENCY.labels(route, model, version).observe(seconds)
        CPU.labels(route).observe(cpu_seconds)
        if g.get("owner", ANONYMOUS) != ANONYMOUS:
            KEY_REQUESTS.labels(g.owner, str(response.status_code)).inc()
        if route not in ("/metrics", "/healthz", "/readyz"):
            request_log.info(json.dumps({
                "event": "request", "method": request.method, "route": route, "status": response.status_code,
                "latency_ms": round(seconds * 1000, 1), "cpu_ms": round(cpu_seconds * 1000, 2), "id": g.get("task_id"),
                "model": g.get("model"), "model_version": g.get("model_version"),
            }))
        return response

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for metric in PROCESS_METRICS:
            registry.register(metric)
    registry.register(_ServiceCollector(current_app.extensions["redis"]))
    if settings.PREDICTION_LOG and settings.DATABASE_URL:
        registry.register(_QualityCollector(current_app.extensions["redis"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class _ServiceCollector:
    """Queue depths, live workers and the workers' batch statistics, read from Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        up = _family("imageclf_redis_up")
        try:
            depth = _family("imageclf_queue_depth")
            in_flight = _family("imageclf_bulk_in_flight")
            for model in settings.MODELS:
                for queue in dict.fromkeys((settings.interactive_queue(model), settings.bulk_queue(model),
                                            settings.shadow_copies_queue(model))):
                    depth.add_metric([queue], self.client.llen(queue))
                in_flight.add_metric([model], self.client.zcard(bulk_in_flight_key(model)))
            depth.add_metric([settings.JOBS_QUEUE], self.client.llen(settings.JOBS_QUEUE))
            workers = _family("imageclf_workers")
            versions = _family("imageclf_model_version_workers")
            counts: dict[tuple[str, str], int] = {}
            serving: dict[tuple[str, str], int] = {}
            memory = _family("imageclf_worker_memory_bytes")
            alive = live_workers(self.client)
            for w in alive:
                key = (w.get("role", "model"), w.get("model", ""))
                counts[key] = counts.get(key, 0) + 1
                if w.get("served_version") is not None and w.get("role") == "model":
                    served = (w["model"], str(w["served_version"]))
                    serving[served] = serving.get(served, 0) + 1
            for (role, model), n in sorted(counts.items()):
                workers.add_metric([role, model], n)
            for w in alive:
                worker = f"{w.get('host', '')}:{w.get('pid', '')}"
                memory.add_metric([w.get("role", "model"), w.get("model", ""), worker], w.get("memory_mb", 0.0) * 2**20)
            for (model, version), n in sorted(serving.items()):
                versions.add_metric([model, version], n)
            stats = read_stats(self.client)
            resumed = _family("imageclf_jobs_resumed")
            counts_resumed = read_resumed(self.client)
            for reason in ("driver_died", "stalled", "items_lost"):
                resumed.add_metric([reason], counts_resumed.get(reason, 0))
            resent = _family("imageclf_requests_resent")
            resent.add_metric([], count_resent(self.client))
            agreement = _family("imageclf_shadow_agreement_ratio")
            for model in settings.MODELS:
                for pair in read_comparisons(self.client, model):
                    if pair["top1_agreement"] is not None:
                        agreement.add_metric([model, str(pair["version"]), str(pair["against"])],
                                             pair["top1_agreement"])
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (up, depth, in_flight, workers, memory, versions, agreement, resumed, resent)
        yield from _worker_stats(stats)


class _QualityCollector:
    """Live accuracy, labelled answers and drift per version, read from the prediction log (at most once every
    QUALITY_EVERY_S per API process: each is a query over the log)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        dropped = _family("imageclf_prediction_log_dropped")
        try:
            for model, n in sorted(self.client.hgetall(DROPPED_KEY).items()):
                dropped.add_metric([text(model)], int(n))
        except redis.RedisError:
            pass
        yield dropped
        yield from _quality_families(self.client)


QUALITY_EVERY_S = 30.0
_quality_cache: tuple[float, list[Metric]] = (0.0, [])
_quality_lock = threading.Lock()


def _quality_families(client: redis.Redis) -> list[Metric]:
    global _quality_cache
    with _quality_lock:
        if time.monotonic() - _quality_cache[0] < QUALITY_EVERY_S:
            return _quality_cache[1]
        accuracy, labelled, drifted = (_family("imageclf_live_accuracy"), _family("imageclf_labelled"),
                                       _family("imageclf_drift"))
        try:
            engine = database.engine()
            day = timedelta(hours=24)
            for (model, version), (kept, recent, right) in sorted(labelled_counts(engine, day).items()):
                labelled.add_metric([model, str(version)], kept)
                if recent:
                    accuracy.add_metric([model, str(version)], right / recent)
            for model in settings.MODELS:
                labels = read_labels(client, model)
                if not labels:
                    continue
                for drift_version, report in drift(engine, model, len(labels), day).items():
                    for signal, figures in report["signals"].items():
                        if figures["psi"] is not None:
                            drifted.add_metric([model, drift_version, signal], figures["psi"])
        except (sa.exc.SQLAlchemyError, redis.RedisError, RuntimeError):
            return []  # the database away: no figures this scrape, the next one asks again
        _quality_cache = (time.monotonic(), [accuracy, labelled, drifted])
        return _quality_cache[1]


def _worker_stats(stats: dict[str, dict[str, float]]) -> Iterator[Metric]:
    images = _family("imageclf_images_classified")
    sizes = _family("imageclf_batch_size")
    inference = _family("imageclf_inference_seconds")
    busy = _family("imageclf_model_busy_seconds")
    for model, fields in sorted(stats.items()):
        busy.add_metric([model], fields.get("busy_seconds_sum", 0.0))
        for version, counts in sorted(by_version(fields).items()):
            images.add_metric([model, version], counts.get("images", 0.0))
            sizes.add_metric([model, version], cumulative(counts, "batch_size_le:", BATCH_SIZE_BUCKETS),
                             counts.get("batch_size_sum", 0.0))
            inference.add_metric([model, version], cumulative(counts, "inference_le:", INFERENCE_BUCKETS_S),
                                 counts.get("inference_seconds_sum", 0.0))
    yield from (images, sizes, inference, busy)
