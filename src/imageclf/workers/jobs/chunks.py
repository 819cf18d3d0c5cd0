"""A job's chunk: consecutive items decoded by whichever decoder takes it, sent to the model in parts.

The job's driver (imageclf.workers.jobs.driver) cuts the job into chunks of JOB_CHUNK items and keeps a bounded
window of them in flight, as `job_chunk` tasks on the jobs queue: every decoder process on every host that consumes
it takes chunks, so one job is decoded on all of them. A video's chunk is a stretch of its sampled times: the
decoder seeks to its own segment, and each frame is sampled once.

A chunk reaches the model as parts of the model workers' bulk batch size, each one `classify` message whose pixels
are one Redis value (the images one after another) and whose answer is one record
(imageclf.workers.model.classify): part `k` of chunk `<id>` is the task `<id>.<k>`; it names its items by index
(`items`), with their other fields (`records`: a video frame's time) when they have some. An item that cannot be
decoded fails alone, its outcome written into the job's items at once; a part none of whose items could be decoded
is answered here, empty, so that the driver sees every part answered.

A chunk whose decoder is killed comes back (`reject_on_worker_lost`). Then its items are read one at a time,
each named in Redis before it is read: an item read by MAX_DELIVERIES processes that all died fails alone
("poison"), and the rest of the chunk goes on.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError

from imageclf import settings
from imageclf.core.celery_app import celery_app, pixel_store
from imageclf.core.payloads import enqueue_classify
from imageclf.core.result_store import store_success
from imageclf.models.decode_budget import DecodeBudget
from imageclf.models.images import ImageDecodeError, decode_to_pixels
from imageclf.models.video import VideoDecodeError, VideoInfo, decode_frames, sample_times
from imageclf.workers.jobs.store import (
    S3_SCHEME,
    chunk_attempt,
    inside,
    items_key,
    job_dir,
    job_key,
    part_id,
    poison_check,
    record_video_end,
    source_roots,
)

logger = get_logger(__name__)

_REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, OperationalError)
#: This decoder process's memory for decoded images (chunks wait for room; they have no client waiting).
_DECODE_BUDGET = DecodeBudget(int(settings.DECODE_BUDGET_MB * 2**20))


class ItemError(Exception):
    """One item (a file, a zip entry) cannot be classified; the rest of the job goes on."""


@celery_app.task(name="job_chunk", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
                 autoretry_for=_REDIS_AWAY, max_retries=None, retry_backoff=1, retry_backoff_max=10,
                 retry_jitter=False)
def job_chunk(self: Any, job_id: str, chunk: dict[str, Any]) -> None:
    """Decode the chunk's items and queue them for the model in parts (see the module's docstring).

    `chunk`: its `id`, `first` item and `count`, the `part` size, the listed `items` (an image job's; none for
    a video) and the `inputs` they are sized for ({version: [height, width, resize]}, "" the job's own).
    """
    client = pixel_store()
    status, raw_spec = client.hmget(job_key(job_id), "status", "spec")
    if raw_spec is None or status not in (b"PENDING", b"PROGRESS"):
        return  # ended or cancelled meanwhile
    spec = json.loads(raw_spec)
    careful = chunk_attempt(client, job_id, chunk["id"]) > 1
    decoded = _Decoded(chunk["count"])
    read = 0
    try:
        for slot, record, outcome, version in _items(client, job_id, spec, chunk, careful):
            decoded.add(slot, record, outcome, version)
            read = slot + 1
    except VideoDecodeError as exc:
        decoded.end, decoded.error = read, str(exc)
    if read < chunk["count"] and decoded.end is None:  # a video shorter than its header says
        decoded.end = read
    if decoded.end is not None:
        logger.warning("job %s: the video ends after frame %d (%s)", job_id, chunk["first"] + decoded.end,
                       decoded.error or "shorter than its header says")
        record_video_end(client, job_id, chunk["first"] + decoded.end, decoded.error)
    if decoded.failed:
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(items_key(job_id), mapping=decoded.failed)
            pipe.expire(items_key(job_id), settings.RESULT_TTL_S)
            pipe.execute()
    if client.hget(job_key(job_id), "status") not in (b"PENDING", b"PROGRESS"):
        return  # cancelled while decoding: nothing to queue
    for k, part in enumerate(decoded.parts(chunk["part"])):
        _send_part(client, job_id, spec, chunk, part_id(chunk["id"], k), part)


class _Decoded:
    """A chunk's items as they are decoded: pixels of the good ones, the outcomes of the others."""

    def __init__(self, count: int) -> None:
        self.slots: list[tuple[dict[str, Any], bytes, int | None] | None] = [None] * count
        self.failed: dict[Any, str] = {}  # item index -> its outcome (Any: redis-py's mapping type)
        self.end: int | None = None  # a video's chunk: the slot where its frames ran out
        self.error: str | None = None

    def add(self, slot: int, record: dict[str, Any], outcome: bytes | str, version: int | None) -> None:
        if isinstance(outcome, str):
            self.failed[str(record["i"])] = json.dumps({**record, "status": "FAILURE", "error": outcome})
        else:
            self.slots[slot] = (record, outcome, version)

    def parts(self, size: int) -> Iterator[list[tuple[dict[str, Any], bytes, int | None]]]:
        """The decoded items of each part of `size` slots, in order (a part may hold none)."""
        for first in range(0, len(self.slots), size):
            yield [item for item in self.slots[first:first + size] if item is not None]


def _send_part(client: redis.Redis, job_id: str, spec: dict[str, Any], chunk: dict[str, Any], task_id: str,
               part: list[tuple[dict[str, Any], bytes, int | None]]) -> None:
    """Queue one part for the model, or answer it at once when none of its items could be decoded."""
    if not part:
        with client.pipeline(transaction=False) as pipe:
            store_success(pipe, task_id, {"model": spec["model"], "items": [], "answers": []}, settings.RESULT_TTL_S)
            pipe.execute()
        return
    sizes = [list(_size(chunk, version)[:2]) for _, _, version in part]
    versions = [version for _, _, version in part]
    extra: dict[str, Any] = {"items": [record.pop("i") for record, _, _ in part], "job": job_id}
    if any(record for record, _, _ in part):  # a video's frames: their times (an image's record is its index)
        extra["records"] = [record for record, _, _ in part]
    if any(size != sizes[0] for size in sizes):
        extra["sizes"] = sizes
    if any(version != versions[0] for version in versions):
        extra["versions"] = versions
    enqueue_classify(celery_app, client, task_id, b"".join(pixels for _, pixels, _ in part),
                     (sizes[0][0], sizes[0][1]), spec["top"], settings.RESULT_TTL_S,
                     queue=settings.bulk_queue(spec["model"]), version=versions[0],
                     pinned=bool(spec.get("pinned")) or "evaluate" in spec, part=extra, route="job",
                     key=spec.get("key"))


def _size(chunk: dict[str, Any], version: int | None) -> tuple[int, int, str]:
    """What an item for `version` is sized for: that version's input, else the job's (the driver's `inputs`)."""
    height, width, resize = chunk["inputs"].get("" if version is None else str(version)) or chunk["inputs"][""]
    return height, width, resize


def _items(client: redis.Redis, job_id: str, spec: dict[str, Any], chunk: dict[str, Any], careful: bool
           ) -> Iterator[tuple[int, dict[str, Any], bytes | str, int | None]]:
    """(slot, record, pixels or why the item cannot be classified, the version it is for) for each item. After
    a death, each item is named before it is read, and one that killed MAX_DELIVERIES readers fails alone."""
    first = chunk["first"]
    if spec["kind"] == "video":
        yield from _frames(client, job_id, spec, chunk, careful)
        return
    for slot, item in enumerate(chunk["items"]):
        index = first + slot
        record = {"i": index}
        version = item.get("version", spec.get("version"))
        if careful and (deaths := poison_check(client, job_id, chunk["id"], index)):
            yield slot, record, f"a decoder process died {deaths} times while reading this item (MAX_DELIVERIES)", \
                version
            continue
        try:
            height, width, resize = _size(chunk, version)  # as _send_part says it is sized
            yield slot, record, decode_to_pixels(read_item(job_id, item), (height, width), settings.MAX_IMAGE_PIXELS,
                                                 resize, _DECODE_BUDGET), version
        except (ItemError, ImageDecodeError) as exc:
            yield slot, record, str(exc), version


def _frames(client: redis.Redis, job_id: str, spec: dict[str, Any], chunk: dict[str, Any], careful: bool
            ) -> Iterator[tuple[int, dict[str, Any], bytes | str, int | None]]:
    """A video chunk's frames: its stretch of the sampled times, from a seek to the first."""
    info = VideoInfo(**spec["video"])
    times = sample_times(info, spec.get("fps"), spec.get("every_n_frames"), spec["max_frames"])
    first, count = chunk["first"], chunk["count"]
    mine = times[first:first + count]
    version = spec.get("version")
    height, width, resize = _size(chunk, version)
    if careful and (deaths := poison_check(client, job_id, chunk["id"], first)):
        # A stretch that kills its decoder fails as a whole: frames are read in one pass, not one by one.
        for slot, t in enumerate(mine):
            yield slot, {"i": first + slot, "t": t, "frame": round(t * info.frame_rate)}, \
                f"a decoder process died {deaths} times while reading these frames (MAX_DELIVERIES)", version
        return
    for slot, frame in enumerate(decode_frames(str(job_dir(job_id) / spec["file"]), mine, info.frame_rate,
                                               (height, width), resize)):
        yield slot, {"i": first + slot, "t": frame.t, "frame": frame.index}, frame.pixels, version


#: Zips this process has open: path -> (the archive, when last read). Each chunk of a job reads a few of its
#: entries, and opening a zip parses its whole central directory (20,000 entries: every chunk would pay for all).
_ARCHIVES: dict[Path, tuple[zipfile.ZipFile, float]] = {}
_ARCHIVES_KEPT = 4
_ARCHIVE_IDLE_S = 30.0


def _archive(path: Path) -> zipfile.ZipFile:
    """The zip at `path`, opened once per process and kept while it is read (closed once idle, or deleted with
    its job, when this process next reads a zip)."""
    now = time.monotonic()
    for kept, (archive, used) in list(_ARCHIVES.items()):
        if kept != path and (now - used > _ARCHIVE_IDLE_S or len(_ARCHIVES) > _ARCHIVES_KEPT or not kept.exists()):
            archive.close()
            del _ARCHIVES[kept]
    if path not in _ARCHIVES:
        _ARCHIVES[path] = (zipfile.ZipFile(path), now)
    archive = _ARCHIVES[path][0]
    _ARCHIVES[path] = (archive, now)
    return archive


def read_item(job_id: str, item: dict[str, Any]) -> bytes:
    """The item's bytes, from its file, its zip entry or its source, refusing more than MAX_UPLOAD_MB."""
    limit = int(settings.MAX_UPLOAD_MB * 2**20)
    if item.get("source", "").startswith(S3_SCHEME):
        return _object(item["source"], limit)
    path = _source_path(item["source"]) if "source" in item else job_dir(job_id) / item["file"]
    try:
        # Never more than the limit, whatever a file's size or a zip entry's header claims; and read(n) allocates
        # n bytes first, so n is the size the file says it has (+1, to see one that grew), not the limit.
        if "member" not in item:
            with open(path, "rb") as f:
                data = f.read(min(os.fstat(f.fileno()).st_size, limit) + 1)
        else:
            archive = _archive(path)
            entry = archive.infolist()[item["member"]]
            with archive.open(entry) as f:
                data = f.read(min(entry.file_size, limit) + 1)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError,
            ValueError, IndexError) as exc:
        raise ItemError(f"cannot read this file ({type(exc).__name__}: {exc})") from None
    if len(data) > limit:
        raise ItemError(f"larger than {settings.MAX_UPLOAD_MB:g} MB (MAX_UPLOAD_MB)")
    return data


def _object(url: str, limit: int) -> bytes:
    """An `s3://` source's object, at most `limit` bytes (MAX_UPLOAD_MB)."""
    from s3fs import S3FileSystem  # imported only for an object store source: aiobotocore is a heavy import

    try:
        with S3FileSystem().open(url[len(S3_SCHEME):], "rb") as f:
            data = f.read(limit + 1)
    except Exception as exc:  # botocore, aiohttp and fsspec raise many kinds: the item fails alone
        raise ItemError(f"cannot read {url}: {type(exc).__name__}: {exc}") from None
    if len(data) > limit:
        raise ItemError(f"larger than {settings.MAX_UPLOAD_MB:g} MB (MAX_UPLOAD_MB)")
    return data


def _source_path(listed: str) -> Path:
    """A `source` job's file, resolved again as it is read: it must still lie inside JOB_SOURCE_ROOTS (the
    volume may have changed since the API listed it)."""
    real = Path(listed).resolve()
    if not any(inside(real, root) for root in source_roots()):
        raise ItemError("this file now lies outside JOB_SOURCE_ROOTS (a symbolic link changed since the job "
                        "was submitted)")
    return real
