"""GET /: a page for people (drop images or a video, watch progress, see labels).

Plain HTML, CSS and JavaScript under imageclf/api/static and imageclf/api/templates: no build step,
no library. The page talks to the same HTTP API as every other client.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask.typing import ResponseReturnValue

from imageclf import settings

bp = Blueprint("web", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else request.host.split("]")[0] + "]"
    flower = settings.FLOWER_URL or f"{request.scheme}://{host}:{settings.FLOWER_PORT}"
    return render_template("index.html", flower_url=flower, models=current_app.config["MODELS"],
                           auth=current_app.extensions["keyring"].enabled, max_upload_mb=settings.MAX_UPLOAD_MB,
                           max_job_mb=settings.MAX_JOB_UPLOAD_MB)
