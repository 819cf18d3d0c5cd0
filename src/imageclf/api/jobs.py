"""POST /jobs (many images, zips, a video, or a `source` folder: 202 at once) and DELETE /jobs/<id> (cancel).

With `evaluate=true`, the images are a labelled dataset (zips in ImageFolder layout, or images
with a `labels` CSV) and the job's result is each version's figures on it (`versions=1,2`).

Uploads are written to UPLOAD_DIR/<job id>/ and never enter Redis. Everything that
can be refused is refused here, before the 202: unknown fields, too many files,
zips that would expand past MAX_UNZIPPED_MB, files that are not videos, videos
that are too long. Zip entries are never extracted to disk (the decoder reads them
from the archive), so their names are only labels and cannot escape the job folder.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage

from imageclf import settings
from imageclf.api.callbacks import requested_callback
from imageclf.api.errors import APIError
from imageclf.api.forms import keep_part, write_parts_to
from imageclf.api.models import Route, requested_model, requested_version, route
from imageclf.api.quotas import charge_request
from imageclf.api.sources import source_items
from imageclf.api.submissions import issued, key_id, queue_unavailable, record_accepted, redis_client, refuse_when_full
from imageclf.api.uploads import flag, form_number
from imageclf.core import tracing
from imageclf.core.model_records import read_labels
from imageclf.models.labelled_sets import LabelledSetError, csv_labels, folder_labels
from imageclf.models.video import VideoDecodeError, probe, sample_times
from imageclf.workers.jobs.store import cancel, create_job, discard, job_dir, read_job, write_items
from imageclf.workers.jobs.webhooks import schedule

bp = Blueprint("jobs", __name__)

_FIELDS = ("images", "video", "labels")
#: Largest `labels` CSV of an evaluation job.
_MAX_LABELS_CSV = 32 * 2**20
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_NAME = 255


@bp.post("/jobs")
def submit_job() -> ResponseReturnValue:
    request.max_content_length = int(settings.MAX_JOB_UPLOAD_MB * 2**20)
    # The form says whether this is an evaluation (which may hold more images) only once it is parsed.
    request.max_form_parts = 2 * max(settings.MAX_JOB_FILES, settings.MAX_EVALUATION_IMAGES) + 100
    g.upload_limit_setting = "MAX_JOB_UPLOAD_MB"
    job_id = str(uuid.uuid4())
    folder = job_dir(job_id)
    write_parts_to(folder)  # the uploads land in the job's folder as they arrive
    try:
        return _accept(job_id, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _accept(job_id: str, folder: Path) -> ResponseReturnValue:
    """Check, store and record the job whose uploads are arriving in `folder`; 202."""
    evaluate = flag("evaluate", default=False)
    source = request.form.get("source") or request.args.get("source")
    videos: list[FileStorage] = []
    if source is not None:
        limit = (settings.MAX_SOURCE_FILES, "MAX_SOURCE_FILES")
        images = _no_files()
    else:
        limit = (settings.MAX_EVALUATION_IMAGES, "MAX_EVALUATION_IMAGES") if evaluate else (settings.MAX_JOB_FILES,
                                                                                          "MAX_JOB_FILES")
        images, videos = _files(*limit)
    model = g.model = requested_model()
    callback = requested_callback()
    if evaluate and videos:
        raise APIError(400, "an evaluation takes labelled images (zips in ImageFolder layout, or images with a "
                            "'labels' CSV), not a video")
    chosen = route(model, requested_version(), interactive=False)  # refuse now (503, 404) what cannot be served
    versions = _evaluated_versions(model, chosen) if evaluate else []
    g.model_version = chosen.version
    top = int(form_number("top", default=5, low=1, high=1000, integer=True) or 5)
    if evaluate:
        top = max(top, 5)  # for the top-5 accuracy
    g.task_id = job_id
    folder.mkdir(parents=True, exist_ok=True)
    if videos:
        spec = _video_spec(videos[0], folder)
        total = spec["frames"]
    else:
        items = source_items(source, *limit) if source is not None else _images_items(images, folder, *limit)
        spec = {"kind": "images"}
        if evaluate:
            items, labels = _label(items, model, versions)
            spec["evaluate"] = {"versions": versions, "images": len(items) // len(versions), "labels": labels}
        write_items(folder, items)
        total = len(items)
    charge_request(total)  # a job counts its images (or frames)
    spec.update(model=model, top=top, version=chosen.version, pinned=chosen.pinned,
                **({"callback_url": callback} if callback else {}))
    _start(job_id, spec, total)
    result_url = url_for("results.result", task_id=job_id)
    response = jsonify(success=True, id=job_id, status="PENDING", kind=spec["kind"], total=total,
                       result_url=result_url, **({"evaluate": {"versions": versions}} if evaluate else {}))
    response.status_code = 202
    response.headers["Location"] = result_url
    return response


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> ResponseReturnValue:
    g.task_id = job_id
    info = issued(job_id)
    if info is None or info.get("kind") != "job":
        raise APIError(404, f"no job with id {job_id!r} (unknown, or its result expired)")
    client = redis_client()
    with queue_unavailable():
        answer = cancel(client, job_id, settings.RESULT_TTL_S)
        if answer is None:
            raise APIError(404, f"no job with id {job_id!r} (its result expired)")
        if answer != "OK":
            raise APIError(409, f"job {job_id} already ended with status {answer}")
        discard(client, job_id)
        job = read_job(client, job_id) or {"done": 0, "total": 0, "spec": {}}
        if job["spec"].get("callback_url"):
            schedule(client, job_id, "job", job["spec"]["callback_url"])
    return jsonify(success=True, id=job_id, status="REVOKED", done=job["done"], total=job["total"])


def _evaluated_versions(model: str, chosen: Route) -> list[int]:
    """`versions=1,2` (each must be served: 404 names the served ones), else the one version asked for or the
    default."""
    raw = request.form.get("versions") or request.args.get("versions")
    if not raw:
        return [chosen.version if chosen.pinned else route(model, None, split=False).version]
    versions = [route(model, part, interactive=False).version for part in raw.split(",") if part.strip()]
    if not versions or len(set(versions)) != len(versions):
        raise APIError(400, f"'versions' must list distinct served versions, e.g. 1,2; got {raw[:50]!r}")
    return versions


def _label(images: list[dict[str, Any]], model: str, versions: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """One item per image and version, the versions of an image next to each other (so the zip is read once,
    in order, and the versions are compared image by image), each with the image's class (from its folder, or
    the `labels` CSV); and the model's class names. 400 naming the first few images that cannot be matched."""
    with queue_unavailable():
        labels = read_labels(redis_client(), model)
    if labels is None:
        raise APIError(503, f"model {model!r} has not announced its class names yet; retry shortly",
                       {"Retry-After": "10"})
    paths = [item.get("path", item["name"]) for item in images]
    upload = request.files.get("labels")
    try:
        if upload is not None and (upload.filename or upload.content_length):
            data = upload.stream.read(_MAX_LABELS_CSV + 1)
            if len(data) > _MAX_LABELS_CSV:
                raise APIError(413, f"the 'labels' CSV is larger than {_MAX_LABELS_CSV // 2**20} MB")
            ids = csv_labels(data.decode("utf-8"), paths, labels)
        else:
            ids = folder_labels(paths, labels)
    except UnicodeDecodeError:
        raise APIError(400, "the 'labels' CSV must be UTF-8 text") from None
    except LabelledSetError as exc:
        raise APIError(400, f"cannot evaluate: {exc}") from None
    items = [{**item, "image": image, "label": class_id, "version": version}
             for image, (item, class_id) in enumerate(zip(images, ids)) for version in versions]
    return items, labels


def _files(most: int, limit: str) -> tuple[list[FileStorage], list[FileStorage]]:
    """The uploads, checked: either `images` (files and zips, at most `most`, the setting `limit`) or one
    `video`."""
    unknown = sorted(set(request.files) - set(_FIELDS))
    if unknown:
        raise APIError(400, f"unknown file field(s) {', '.join(map(repr, unknown))}: send images as 'images' "
                            "(several files, or zips of images) or one video as 'video' (and, to evaluate, "
                            "a 'labels' CSV)")
    images = [f for f in request.files.getlist("images") if f.filename or f.content_length]
    videos = request.files.getlist("video")
    if images and videos:
        raise APIError(400, "send either 'images' or one 'video' per job, not both")
    if len(videos) > 1:
        raise APIError(400, f"one 'video' per job, got {len(videos)}")
    if not images and not videos:
        raise APIError(400, "no files: send multipart/form-data with 'images' (files or zips) or one 'video'")
    if len(images) > most:
        raise APIError(413, f"{len(images)} files; a job takes at most {most} ({limit})")
    return images, videos


def _no_files() -> list[FileStorage]:
    """A job naming its `source` folder uploads nothing (a `labels` CSV aside)."""
    uploaded = sorted(name for name in request.files if name != "labels")
    if uploaded:
        raise APIError(400, f"a job names either a 'source' folder or uploads files, not both (got "
                            f"{', '.join(map(repr, uploaded))})")
    return []


def _display_name(name: str | None, fallback: str) -> str:
    """A name to report back: printable, bounded; never used as a path."""
    cleaned = "".join(ch for ch in (name or "") if ch.isprintable())[:_MAX_NAME]
    return cleaned or fallback


def _images_items(uploads: list[FileStorage], folder: Path, most: int, limit: str) -> list[dict[str, Any]]:
    """Save every upload under a generated name; list each image and each zip entry as an item (at most `most`,
    the setting `limit`)."""
    items: list[dict[str, Any]] = []
    unzipped = 0
    for n, upload in enumerate(uploads):
        name = _display_name(upload.filename, f"file-{n}")
        head = upload.stream.read(4)
        upload.stream.seek(0)
        if head != _ZIP_MAGIC:
            stored = f"{n:05d}.upload"
            keep_part(upload, folder / stored)
            items.append({"name": name, "file": stored})
            continue
        stored = f"{n:05d}.zip"
        keep_part(upload, folder / stored)
        entries, size = _zip_entries(folder / stored, name)
        unzipped += size
        items += [{"name": f"{name}/{entry}", "path": entry, "file": stored, "member": index}
                  for index, entry in entries]
        if len(items) > most:
            raise APIError(413, f"more than {most} files with the zips' entries ({limit})")
        if unzipped > settings.MAX_UNZIPPED_MB * 2**20:
            raise APIError(413, f"the zips would expand to more than {settings.MAX_UNZIPPED_MB:g} MB "
                                "(MAX_UNZIPPED_MB)")
    return items


def _zip_entries(path: Path, name: str) -> tuple[list[tuple[int, str]], int]:
    """(index, name) of the archive's files, and the bytes their headers declare.

    Folders, hidden files and macOS resource forks are skipped. Headers can lie about
    sizes: the decoder also stops reading any entry past MAX_UPLOAD_MB.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise APIError(400, f"{name}: not a readable zip archive ({exc})") from None
    entries, size = [], 0
    for index, info in enumerate(infos):
        base = info.filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        if info.is_dir() or not base or base.startswith(".") or info.filename.startswith("__MACOSX/"):
            continue
        entries.append((index, _display_name(info.filename, f"entry-{index}")))
        size += info.file_size
    if not entries:
        raise APIError(400, f"{name}: the zip archive holds no files")
    return entries, size


def _video_spec(upload: FileStorage, folder: Path) -> dict[str, Any]:
    fps = form_number("fps", default=None, low=0.001, high=1000)
    every = form_number("every_n_frames", default=None, low=1, high=10**6, integer=True)
    max_frames = form_number("max_frames", default=None, low=1, high=settings.MAX_VIDEO_FRAMES, integer=True)
    if fps is not None and every is not None:
        raise APIError(400, "give either 'fps' or 'every_n_frames', not both")
    suffix = Path(upload.filename or "").suffix.lower()
    stored = "video" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else "")
    keep_part(upload, folder / stored)
    name = _display_name(upload.filename, "video")
    try:
        info = probe(str(folder / stored))
    except VideoDecodeError as exc:
        raise APIError(415, f"{name}: {exc}") from None
    if info.duration_s > settings.MAX_VIDEO_SECONDS:
        raise APIError(413, f"{name}: the video lasts {info.duration_s:.0f} s; the limit is "
                            f"{settings.MAX_VIDEO_SECONDS:g} s (MAX_VIDEO_SECONDS)")
    frames = len(sample_times(info, fps, None if every is None else int(every),
                              int(max_frames or settings.MAX_VIDEO_FRAMES + 1)))
    if max_frames is None and frames > settings.MAX_VIDEO_FRAMES:
        raise APIError(413, f"{name}: sampling it would give {frames} frames; the limit is "
                            f"{settings.MAX_VIDEO_FRAMES} (MAX_VIDEO_FRAMES): lower 'fps' or set 'max_frames'")
    return {"kind": "video", "name": name, "file": stored, "video": dataclasses.asdict(info), "fps": fps,
            "every_n_frames": every, "max_frames": max_frames or frames, "frames": frames}


def _start(job_id: str, spec: dict[str, Any], total: int) -> None:
    """Record the job and its issued id, then queue its first step for the decoder workers."""
    client = redis_client()
    if key_id():  # the prediction log's key id of the job's images
        spec = {**spec, "key": key_id()}
    with queue_unavailable():
        refuse_when_full(settings.JOBS_QUEUE)
        step_id = str(uuid.uuid4())
        with client.pipeline(transaction=True) as pipe:
            create_job(pipe, job_id, spec["kind"], total, spec, settings.RESULT_TTL_S, driver=step_id)
            pipe.execute()
        # The API has no Celery instrumentation (its sender app does not know the task): the job's trace goes
        # in the headers where the decoders' instrumentation looks for it. Should this process die before the
        # step is queued, the decoders' stall sweep sends it (JOB_STALL_S).
        current_app.extensions["celery"].send_task("job_step", args=[job_id], task_id=step_id,
                                                   headers=tracing.carrier())
    record_accepted(job_id, {"kind": "job", "model": spec["model"]})
