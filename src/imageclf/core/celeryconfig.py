"""Celery settings as a plain module (Celery's `config_from_object` reads it).

Values come from imageclf/settings.py, the one place that reads the environment.
"""

from typing import Any

from imageclf import settings

broker_url = settings.REDIS_URL or "redis://127.0.0.1:6379/0"
result_backend = broker_url
# kombu's Redis transport with one client per channel (see imageclf/core/broker.py for why).
broker_transport = "imageclf.core.broker:" + (
    "SentinelTransport" if broker_url.startswith("sentinel://") else "Transport")

# Pixels travel as raw bytes (msgpack); results are JSON so anything can read them. Never pickle.
task_serializer = "msgpack"
result_serializer = "json"
accept_content = ["msgpack", "json"]
result_accept_content = ["json"]

# Single images go to their model's interactive queue, job images and frames to its bulk queue (both
# served by that model's workers, started with -Q interactive.<model>,bulk.<model>; senders name the
# queue), job drivers and chunks to the decoder workers (-Q jobs).
task_default_queue = settings.interactive_queue(settings.MODELS[0])
task_routes = {"job_step": {"queue": settings.JOBS_QUEUE}, "job_chunk": {"queue": settings.JOBS_QUEUE}}
imports = ("imageclf.workers.roles", "imageclf.workers.model.process", "imageclf.workers.model.classify",
           "imageclf.workers.jobs.process", "imageclf.workers.jobs.driver", "imageclf.workers.jobs.chunks",
           "imageclf.workers.jobs.webhooks")

# One process owns the model (one per GPU); batching happens inside it.
worker_pool = "prefork"
worker_concurrency = 1
# celery-batches can only batch what was prefetched: room for a full batch running, a full batch
# filling behind it, and one more batch of slots that job images and frames never take
# (settings.BULK_IN_FLIGHT), so /predict requests are fetched the moment they arrive.
worker_prefetch_multiplier = 3 * settings.BATCH_SIZE
# Loading and warming a model takes far longer than the 4 s default.
worker_proc_alive_timeout = 180.0
worker_send_task_events = True
task_send_sent_event = True

# A request is acknowledged after its batch ran, so a crashed worker's requests are redelivered.
task_acks_late = True
# "priority": a worker always fetches from its first queue (interactive) before the next (bulk),
# instead of Redis' default round robin. kombu looks for unacknowledged tasks to hand out again
# only every interval x throttle seconds (100 s by default): sweep at a quarter of the timeout.
# A live worker renews its unacknowledged tasks four times per timeout (imageclf/core/broker.py), so only a
# dead worker's are handed out again.
broker_transport_options: dict[str, Any] = {
    "visibility_timeout": settings.VISIBILITY_TIMEOUT_S,
    "queue_order_strategy": "priority",
    "unacked_restore_interval": max(1, min(30, settings.VISIBILITY_TIMEOUT_S // 4)),
    "unacked_restore_throttle": 1,
    "touch_interval": max(0.5, settings.VISIBILITY_TIMEOUT_S / 4),
}
result_backend_transport_options: dict[str, Any] = {"visibility_timeout": settings.VISIBILITY_TIMEOUT_S}
# REDIS_URL=sentinel://h:p;sentinel://h:p;... : both ask those Sentinels for the master REDIS_SENTINEL_MASTER.
if broker_url.startswith("sentinel://"):
    broker_transport_options["master_name"] = settings.REDIS_SENTINEL_MASTER
    result_backend_transport_options["master_name"] = settings.REDIS_SENTINEL_MASTER
result_expires = settings.RESULT_TTL_S
broker_connection_retry_on_startup = True
