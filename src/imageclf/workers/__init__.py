"""The two kinds of Celery workers, started by `imageclf worker` (imageclf.launch.start_workers).

- `model/`: a model worker, one process per GPU, that loads the model once and computes batches of
  `classify` requests (celery-batches), interactive ones first.
- `jobs/`: the decoders, that drive jobs (folders, zips, buckets, videos, evaluations), decode their images in
  chunks on every decoder of every host, send them to the model in parts, and deliver webhooks.
- `roles.py`: which of the two a worker is, from the queues it consumes.

Both use imageclf.core (the Celery app, payloads, results, Redis clients) and imageclf.models; the API imports
`jobs/` to create and read jobs, never `model/` (TensorFlow stays out of the API process).
"""
