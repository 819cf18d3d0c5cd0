"""The prediction log: one PostgreSQL row per answered image and version, written off the hot path.

A model worker's pool process builds the rows of a batch from the probabilities it already holds (the top
PREDICTION_LOG_TOP classes, the top-1 confidence and the entropy of the whole row) after the batch's answers are
stored, and hands them to a writer thread: one COPY per batch (or per several, when they come faster than the
database takes them), never a round trip per image, and never anything a client waits for. While the database
is away the rows wait in a bounded buffer (PREDICTION_LOG_BUFFER) and are written when it returns; what the
buffer had to drop is counted in Redis (imageclf_prediction_log_dropped_total).

A job's image is logged under `<job id>:<item index>`, a request under its id. Shadow copies are logged too
(route "shadow"), under their request's id and their own version: a label given later scores both versions.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

logger = logging.getLogger(__name__)


class Pending:
    """An image selected for review, waiting in its row for the writer's keeper (imageclf.core.review_queue)."""

    __slots__ = ("image", "reasons", "rules")

    def __init__(self, image: np.ndarray, reasons: list[str], rules: Any) -> None:
        self.image, self.reasons, self.rules = image, reasons, rules

metadata = sa.MetaData()
#: The table the migrations create (imageclf/core/migrations), for queries.
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("model", sa.Text),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("key_id", sa.Text),
    sa.Column("route", sa.Text),
    sa.Column("job_id", sa.Text),
    sa.Column("item", sa.Integer),
    sa.Column("top_ids", postgresql.ARRAY(sa.Integer)),
    sa.Column("top_probs", postgresql.ARRAY(sa.REAL)),
    sa.Column("confidence", sa.REAL),
    sa.Column("entropy", sa.REAL),
    sa.Column("label", sa.Integer),
    sa.Column("labelled_at", sa.DateTime(timezone=True)),
    sa.Column("review", postgresql.ARRAY(sa.Text)),
    sa.Column("review_file", sa.Text),
    sa.Column("phash", sa.BigInteger),
)
drift_references = sa.Table(
    "drift_references", metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("since", sa.DateTime(timezone=True)),
)
COLUMNS = ("request_id", "version", "model", "at", "key_id", "route", "job_id", "item", "top_ids", "top_probs",
           "confidence", "entropy", "review", "review_file", "phash")
_REVIEW_FILE = COLUMNS.index("review_file")
#: Redis hash: model -> rows a worker had to drop (its buffer full while the database was away).
DROPPED_KEY = "imageclf:prediction_log:dropped"
#: Rows in one COPY at most.
_MOST_PER_COPY = 10_000
#: Seconds the writer waits for more rows before a COPY.
_LINGER_S = 0.5


def job_item_id(job_id: str, item: int) -> str:
    """The logged id of a job's image."""
    return f"{job_id}:{item}"


def sampled(request_id: str, share: float) -> bool:
    """Whether `request_id` is in the logged `share` percent: a stable choice, the same in every process."""
    return share >= 100.0 or zlib.crc32(request_id.encode()) % 10_000 < share * 100


def rows(model: str, version: int, answered: list[tuple[dict[str, Any], np.ndarray]], at: float,
         top: int, share: float) -> list[tuple]:
    """The log's rows for one model call: `answered` is (what identifies the image, its probability row). An image
    selected for review (`who["review"]`, imageclf.core.review_queue.Pending) is always logged, whatever the share:
    the writer's keeper saves it and fills in the row's review columns."""
    kept = [(who, row) for who, row in answered if "review" in who or sampled(who["request_id"], share)]
    if not kept:
        return []
    probabilities = np.stack([row for _, row in kept]).astype(np.float64, copy=False)
    k = min(top, probabilities.shape[1])
    best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(probabilities, best, axis=1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(best, order, axis=1)
    best_p = np.take_along_axis(probabilities, best, axis=1)
    clipped = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(probabilities * np.log(clipped)).sum(axis=1)
    when = datetime.fromtimestamp(at, timezone.utc)
    return [(who["request_id"], version, model, when, who.get("key"), who["route"], who.get("job"), who.get("item"),
             [int(i) for i in ids], [float(p) for p in ps], float(ps[0]), float(max(0.0, h)), None, who.get("review"),
             None)
            for (who, _), ids, ps, h in zip(kept, best, best_p, entropy)]


class Writer:
    """A thread that writes queued rows with COPY, keeping at most `capacity` while the database is away."""

    def __init__(self, connect: Any, client: redis.Redis, capacity: int, retry_s: float = 1.0,
                 keep: Callable[[Any, list[tuple]], list[tuple]] | None = None) -> None:
        self._connect = connect  # () -> a psycopg connection
        self._keep = keep  # (connection, rows) -> the rows, their images kept for review (imageclf.core.review_queue)
        self._client = client
        self._rows: collections.deque[tuple] = collections.deque()
        self._capacity = capacity
        self._retry_s = retry_s
        self._wake = threading.Condition()
        self._connection: Any = None
        self.written = 0
        self._away = False
        self._dropped: collections.Counter = collections.Counter()
        threading.Thread(target=self._run, name="prediction-log", daemon=True).start()

    def add(self, new: list[tuple]) -> None:
        """Queue rows (never blocks, never raises): the oldest go when the buffer is full."""
        if not new:
            return
        with self._wake:
            woken = not self._rows or len(self._rows) + len(new) >= _MOST_PER_COPY
            self._rows.extend(new)
            while len(self._rows) > self._capacity:
                self._dropped[self._rows.popleft()[2]] += 1
            if woken:
                self._wake.notify()

    def pending(self) -> int:
        return len(self._rows)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._rows:
                    self._wake.wait()
                # Linger: one COPY for the batches of the next moment, not one per model call (a busy worker's
                # calls of a few images each paid 0.36 ms of its CPU an image in round trips).
                deadline = time.monotonic() + _LINGER_S
                while len(self._rows) < _MOST_PER_COPY and (left := deadline - time.monotonic()) > 0:
                    self._wake.wait(left)
                batch = [self._rows.popleft() for _ in range(min(len(self._rows), _MOST_PER_COPY))]
            try:
                if self._keep is not None and any(isinstance(row[_REVIEW_FILE], Pending) for row in batch):
                    batch = self._keep(self._open(), batch)  # once: a retried COPY does not keep them again
                self._write(batch)
            except Exception as exc:  # the database away or refusing: keep the rows, try again
                with self._wake:
                    self._rows.extendleft(reversed(batch))
                    while len(self._rows) > self._capacity:
                        self._dropped[self._rows.popleft()[2]] += 1
                if not self._away:  # once per outage
                    logger.warning("prediction log: the database is away, rows wait for it (%s: %s)",
                                   type(exc).__name__, str(exc).strip()[:200])
                self._away = True
                self._close()
                time.sleep(self._retry_s)
            else:
                self.written += len(batch)
                if self._away:
                    logger.warning("prediction log: the database is back; %d rows still to write", len(self._rows))
                self._away = False
            self._report_dropped()

    def _open(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = self._connect()
            # Rows go into a temporary table, then one INSERT … ON CONFLICT: a batch written again after a lost
            # acknowledgement (a redelivered request, a retried COPY) replaces its rows instead of failing.
            self._connection.execute("CREATE TEMPORARY TABLE incoming (LIKE predictions INCLUDING DEFAULTS)"
                                     " ON COMMIT DELETE ROWS")
            self._connection.commit()
        return self._connection

    def _write(self, batch: list[tuple]) -> None:
        with self._open().cursor() as cursor:
            with cursor.copy(f"COPY incoming ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)
            # A shadow answer that arrives after its request was labelled (it runs after the client's answer, on
            # the bulk lane) takes the label; other rows come before any label can.
            labelled = ("(SELECT p.{0} FROM predictions p WHERE i.route = 'shadow' AND p.request_id = i.request_id "
                        "AND p.label IS NOT NULL LIMIT 1)")
            cursor.execute(
                f"INSERT INTO predictions ({', '.join(COLUMNS)}, label, labelled_at) SELECT DISTINCT ON "
                f"(i.request_id, i.version) {', '.join('i.' + c for c in COLUMNS)}, {labelled.format('label')}, "
                f"{labelled.format('labelled_at')} FROM incoming i ON CONFLICT (request_id, version) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[2:]))
        self._connection.commit()

    def _close(self) -> None:
        try:
            if self._connection is not None:
                self._connection.close()
        except Exception:  # closing a broken connection
            pass
        self._connection = None

    def _report_dropped(self) -> None:
        if not self._dropped:
            return
        with self._wake:
            dropped, self._dropped = self._dropped, collections.Counter()
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for model, n in dropped.items():
                    pipe.hincrby(DROPPED_KEY, model, n)
                pipe.execute()
        except redis.RedisError:
            with self._wake:
                self._dropped.update(dropped)


def delete_older_than(engine: sa.Engine, days: float, chunk: int = 50_000) -> int:
    """Delete the rows older than `days`, `chunk` at a time (short transactions); returns how many."""
    cutoff = datetime.now(timezone.utc).timestamp() - days * 86400
    removed = 0
    while True:
        with engine.begin() as connection:
            done = connection.execute(sa.text(
                "DELETE FROM predictions WHERE ctid IN (SELECT ctid FROM predictions WHERE at < :cutoff LIMIT :n)"),
                {"cutoff": datetime.fromtimestamp(cutoff, timezone.utc), "n": chunk}).rowcount
        removed += done
        if done < chunk:
            return removed


#: Redis lock: one process of all runs the hourly retention.
_RETENTION_LOCK = "imageclf:prediction_log:retention"
_RETENTION_EVERY_S = 3600.0


def start_retention(engine: Any, client: redis.Redis, days: float, every_s: float = _RETENTION_EVERY_S) -> None:
    """In a model worker process: once an hour, by whichever process takes the lock in Redis first, delete the
    rows older than `days` (PREDICTION_LOG_DAYS)."""

    def loop() -> None:
        while True:
            try:
                if client.set(_RETENTION_LOCK, "1", nx=True, px=int(every_s * 1000)):
                    removed = delete_older_than(engine(), days)
                    if removed:
                        logger.info("prediction log: deleted %d rows older than %g days", removed, days)
            except Exception as exc:  # Redis or the database away: the next round tries again
                logger.warning("prediction log retention: %s: %s", type(exc).__name__, exc)
            time.sleep(min(every_s, 60.0))

    threading.Thread(target=loop, name="prediction-log-retention", daemon=True).start()
