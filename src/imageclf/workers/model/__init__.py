"""The model worker: its process hooks (`process`: load and warm the model, pick the batch size, announce
readiness), the `classify` task (`classify`, batched by `batching` over the broker's own transport, interactive
requests before bulk work), the versions it serves and their routing (`versions`) and the batch-size timing
(`batch_size`). Imported by Celery in model workers only (imageclf.core.celeryconfig)."""
