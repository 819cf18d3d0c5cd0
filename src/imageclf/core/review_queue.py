"""The review queue: answered images worth a label (imageclf.models.review_rules), kept where the API and the decoders
can read them, one per burst of near-identical images.

A model worker selects an image as it logs the answer (the pixels are in hand: nothing is fetched again, and no
client waits). The prediction log's writer thread then keeps it (`Keeper.keep`, before its COPY): perceptual hash,
dropped when one already kept for the model is within the rules' `distance`, or past the day's `max_per_day`;
else saved as a lossless PNG of what the model saw (its input, so an offline evaluation of it gives the same
answer) under REVIEW_DIR (a folder, or an `s3://bucket/prefix` through fsspec), and the row says why
(`review`), where (`review_file`) and its hash (`phash`).
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from typing import Any

import fsspec
import redis
import sqlalchemy as sa
from PIL import Image

from imageclf import settings
from imageclf.core.prediction_log import COLUMNS, Pending, predictions
from imageclf.models.review_rules import hamming, perceptual_hash

logger = logging.getLogger(__name__)
#: Redis counter of the images kept for a model on a UTC day (the day's key expires after two).
KEPT_PREFIX = "imageclf:review:kept:"
_AT, _REVIEW, _FILE, _PHASH = (COLUMNS.index(c) for c in ("at", "review", "review_file", "phash"))
_NEAR = ("SELECT request_id FROM predictions WHERE model = %s AND review IS NOT NULL AND phash IS NOT NULL "
         "AND bit_count((phash # %s)::bit(64)) <= %s LIMIT 1")


def storage() -> tuple[Any, str]:
    """(fsspec filesystem, root path) of REVIEW_DIR."""
    fs, root = fsspec.core.url_to_fs(settings.REVIEW_DIR)
    return fs, root.rstrip("/")


def file_name(model: str, request_id: str, version: int, at: datetime) -> str:
    """Where an image is kept, relative to REVIEW_DIR: one folder per model and day."""
    return f"{model}/{at:%Y-%m-%d}/{request_id.replace(':', '_').replace('/', '_')}-v{version}.png"


def read_image(relative: str) -> bytes:
    """A kept image's PNG bytes (OSError / FileNotFoundError when gone)."""
    fs, root = storage()
    with fs.open(f"{root}/{relative}", "rb") as f:
        return f.read()


class Keeper:
    """Keeps the selected images of the rows the prediction log's writer is about to COPY (its thread only)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._fs, self._root = storage()

    def keep(self, connection: Any, batch: list[tuple]) -> list[tuple]:
        """The rows with each selected image kept (review columns set) or let go (a near-duplicate, the day's
        quota spent, a failed write: the row stays, without review)."""
        out: list[tuple] = []
        hashes: list[tuple[str, int]] = []
        for row in batch:
            pending = row[_FILE]
            if not isinstance(pending, Pending):
                out.append(row)
                continue
            fields = list(row)
            fields[_FILE] = None
            model, request_id, version = row[2], row[0], row[1]
            phash = perceptual_hash(pending.image)
            fields[_PHASH] = phash
            distance = pending.rules.distance
            duplicate = any(m == model and hamming(h, phash) <= distance for m, h in hashes) or \
                connection.execute(_NEAR, (model, phash, distance)).fetchone() is not None
            if not duplicate and self._within_quota(model, pending.rules.max_per_day, row[_AT]):
                relative = file_name(model, request_id, version, row[_AT])
                try:
                    self._save(relative, pending.image)
                except Exception as exc:  # a full disk, the object store away: the answer is logged without it
                    logger.warning("review: cannot keep %s (%s: %s)", relative, type(exc).__name__, exc)
                else:
                    fields[_REVIEW], fields[_FILE] = list(pending.reasons), relative
                    hashes.append((model, phash))
            out.append(tuple(fields))
        connection.commit()  # the duplicate checks' transaction
        return out

    def _within_quota(self, model: str, most: int, at: datetime) -> bool:
        key = f"{KEPT_PREFIX}{model}:{at:%Y-%m-%d}"
        with self._client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2 * 86400)
            count = pipe.execute()[0]
        if count > most:
            self._client.decr(key)
            return False
        return True

    def _save(self, relative: str, image: Any) -> None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG", compress_level=1)
        path = f"{self._root}/{relative}"
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self._fs.open(path, "wb") as f:
            f.write(buffer.getvalue())


def listed(engine: sa.Engine, model: str | None, reason: str | None, labelled: bool | None, limit: int,
           offset: int = 0) -> list[dict[str, Any]]:
    """The queue, newest first: one entry per kept image (a request kept for two versions shows once)."""
    query = sa.select(predictions).where(predictions.c.review.is_not(None))
    if model:
        query = query.where(predictions.c.model == model)
    if reason:
        query = query.where(predictions.c.review.any(reason))
    if labelled is not None:
        query = query.where(predictions.c.label.is_not(None) if labelled else predictions.c.label.is_(None))
    query = query.order_by(predictions.c.at.desc(), predictions.c.request_id).limit(limit).offset(offset)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [dict(row) for row in rows]


def one(engine: sa.Engine, request_id: str) -> dict[str, Any] | None:
    """The kept image of `request_id` (the newest, when kept for two versions)."""
    with engine.connect() as connection:
        row = connection.execute(sa.select(predictions).where(
            predictions.c.request_id == request_id, predictions.c.review.is_not(None)).order_by(
            predictions.c.at.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def counts(engine: sa.Engine, model: str | None) -> dict[str, Any]:
    """How many kept images wait for a label and how many have one, per reason."""
    where = [predictions.c.review.is_not(None)] + ([predictions.c.model == model] if model else [])
    reason = sa.func.unnest(predictions.c.review).label("reason")
    sub = sa.select(reason, predictions.c.label).where(*where).subquery()
    with engine.connect() as connection:
        found = connection.execute(sa.select(sub.c.reason, sa.func.count().filter(sub.c.label.is_(None)),
                                             sa.func.count().filter(sub.c.label.is_not(None)))
                                   .group_by(sub.c.reason)).all()
        waiting, done = connection.execute(sa.select(
            sa.func.count().filter(predictions.c.label.is_(None)),
            sa.func.count().filter(predictions.c.label.is_not(None))).where(*where)).one()
    return {"waiting": waiting, "labelled": done,
            "reasons": {r: {"waiting": w, "labelled": d} for r, w, d in found}}


def utc(at: datetime | None) -> str | None:
    return at.astimezone(timezone.utc).isoformat() if at else None
