"""The HTTP API: a Flask app factory with one blueprint per concern.

This process never imports TensorFlow: it validates and resizes uploads with
Pillow and sends pixels to the workers through Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from redis import Redis

from imageclf import settings
from imageclf.api import (
    admin,
    health,
    jobs,
    models,
    openapi,
    predict,
    promotion,
    quality,
    results,
    review,
    usage,
    v2,
    web,
)
from imageclf.api.auth import init_auth
from imageclf.api.errors import register_error_handlers
from imageclf.api.forms import UploadRequest
from imageclf.api.keyring import KeyRing
from imageclf.api.metrics import init_metrics, line_log
from imageclf.api.unread_bodies import DrainUnreadBodies
from imageclf.api.waiter import ResultWaiter
from imageclf.core import database, tracing
from imageclf.core.model_records import InputLookup
from imageclf.core.promotion import start_controller
from imageclf.core.redis_clients import connect
from imageclf.models.decode_budget import DecodeBudget


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=int(settings.MAX_UPLOAD_MB * 1024 * 1024),
        MAX_IMAGE_PIXELS=settings.MAX_IMAGE_PIXELS,
        MODELS=list(settings.MODELS),
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False

    celery = celery_init_app(app)
    broker_url = celery.conf.broker_url
    app.extensions["redis"] = connect(broker_url, socket_timeout=5, socket_connect_timeout=2)
    app.extensions["result_waiter"] = ResultWaiter(broker_url)
    app.extensions["model_inputs"] = InputLookup(app.extensions["redis"])
    app.extensions["decode_budget"] = DecodeBudget(int(settings.DECODE_BUDGET_MB * 2**20))

    tracing.start_if_configured("imageclf-api")
    tracing.instrument_api(app, app.extensions["redis"])
    register_error_handlers(app)
    init_auth(app, KeyRing(settings.API_KEYS, settings.API_KEYS_FILE))
    init_metrics(app)
    for blueprint in (predict.bp, jobs.bp, results.bp, models.bp, health.bp, openapi.bp, web.bp, v2.bp, admin.bp,
                      usage.bp, quality.bp, review.bp, promotion.bp):
        app.register_blueprint(blueprint)
    if settings.PROMOTION_CONTROLLER:
        start_promotion_controller(app.extensions["redis"])
    # Flask's documented way to add WSGI middleware; mypy does not allow assigning to a method.
    app.wsgi_app = DrainUnreadBodies(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]
    return app


_controller_started = False


def start_promotion_controller(client: Redis) -> None:
    """The promotion controller's loop, once per process (imageclf.core.promotion: it acts for the models whose
    lock it holds)."""
    global _controller_started
    if not _controller_started:
        _controller_started = True
        start_controller(client, lambda: database.engine() if settings.PREDICTION_LOG and settings.DATABASE_URL
                         else None, line_log(logging.getLogger("imageclf.promotion")))


def celery_init_app(app: Flask) -> Celery:
    """A send-only Celery app (same celeryconfig as the workers, no result backend).

    Results are read from Redis by imageclf.core.result_store instead; see there for why.
    """
    celery = Celery(app.import_name)
    celery.config_from_object("imageclf.core.celeryconfig")
    celery.conf.result_backend = None
    # A task-sent event is a second publish through Redis for every /predict (0.4 ms of the API's CPU);
    # Flower still sees every task from the worker's task-received event.
    celery.conf.task_send_sent_event = False
    app.extensions["celery"] = celery
    return celery
