"""What the API and both kinds of workers share: the Celery app (`celery_app`) and its configuration
(`celeryconfig`), the broker transport (`broker`), how a request travels (`payloads`, `pixel_reads`), answers
(`result_store`), Redis clients (`redis_clients`), heartbeats (`readiness`), metrics (`stats`), tracing, the
watch for lost requests (`request_watch`), the models' records in Redis (`model_records`) and the shadow
copies' comparisons (`shadow`). Imports nothing of the API or the workers."""
