"""The Celery app (`imageclf.core.celery_app:celery_app`, configured from imageclf.core.celeryconfig), and this
process's Redis client for the keys the tasks keep beside Celery's.

The API imports only this (to send tasks by name); task code and the worker hooks are imported by workers through
the `imports` setting, so TensorFlow stays out of the API process.
"""

from __future__ import annotations

import redis
from celery import Celery

from imageclf.core.redis_clients import connect

#: How `celery -A` names this app.
CELERY_APP = "imageclf.core.celery_app:celery_app"

celery_app = Celery("imageclf")
celery_app.config_from_object("imageclf.core.celeryconfig")

_pixel_store: redis.Redis | None = None


def pixel_store() -> redis.Redis:
    """This process's Redis client for request pixels, answers and jobs (made after the fork, never shared)."""
    global _pixel_store
    if _pixel_store is None:
        _pixel_store = connect(celery_app.conf.broker_url, socket_timeout=30)
    return _pixel_store
