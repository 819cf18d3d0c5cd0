"""What the prediction log costs and how its queries scale, on the embedded PostgreSQL:

    python -m benchmarks.prediction_log --rows 1000000 --out benchmarks/results/benchmark-prediction-log

- the model process' CPU to build a batch's rows (imageclf.core.prediction_log.rows: top-k and entropy over
  1,000 classes, 32 images a batch), per image;
- rows written per second by one writer (its COPY thread, batches of 32 handed to it as fast as it takes them);
- GET /models/<m>/quality's two queries (live quality of a version, drift) at `--rows` rows in the log, a
  fifth of them labelled, one day of traffic;
- the review queue: the model process' CPU to apply a model's review rules to an answer
  (imageclf.workers.model.review), and the writer thread's time to keep a selected image (perceptual hash, the
  near-duplicate query over `--kept` images already kept, the PNG written to REVIEW_DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from imageclf.core import database
from imageclf.core.live_quality import drift, quality
from imageclf.core.prediction_log import COLUMNS, Writer, rows
from imageclf.launch import postgres_server
from imageclf.launch.redis_server import free_port
from imageclf.launch.supervise import wait_until

CLASSES = 1000


class _NoRedis:
    """The writer reports dropped rows to Redis; none are dropped here."""

    def pipeline(self, **_: Any) -> Any:
        raise AssertionError("no row should be dropped")


def _batches(count: int, size: int = 32) -> list[list[tuple]]:
    generator = np.random.default_rng(1)
    out = []
    for b in range(count // size):
        probabilities = generator.dirichlet(np.full(CLASSES, 0.05), size=size).astype(np.float32)
        who = [{"request_id": f"w{b}-{i}", "route": "predict"} for i in range(size)]
        out.append(rows("m", 1, list(zip(who, probabilities)), time.time(), 5, 100))
    return out


def build_cost_ms(batches: int = 300) -> float:
    generator = np.random.default_rng(2)
    probabilities = generator.dirichlet(np.full(CLASSES, 0.05), size=32).astype(np.float32)
    who = [{"request_id": f"c{i}", "route": "predict"} for i in range(32)]
    started = time.process_time()
    for _ in range(batches):
        rows("m", 1, list(zip(who, probabilities)), time.time(), 5, 100)
    return (time.process_time() - started) / (batches * 32) * 1000


def writer_rows_per_s(url: str, count: int) -> float:
    batches = _batches(count)
    writer = Writer(database.connection, _NoRedis(), capacity=count * 2)
    started = time.perf_counter()
    for batch in batches:
        writer.add(batch)
    total = sum(len(b) for b in batches)
    while writer.written < total:
        time.sleep(0.01)
    return total / (time.perf_counter() - started)


def fill(engine: sa.Engine, count: int) -> None:
    """`count` rows over the last day, a fifth labelled (right 80 % of the time), in one COPY."""
    generator = np.random.default_rng(3)
    now = datetime.now(timezone.utc)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = (*COLUMNS, "label", "labelled_at")
        with cursor.copy(f"COPY predictions ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for i in range(count):
                top = [int(c) for c in generator.choice(CLASSES, 5, replace=False)]
                confidence = float(generator.beta(5, 2))
                labelled = i % 5 == 0
                label = (top[0] if generator.random() < 0.8 else int(generator.integers(CLASSES))) if labelled else None
                at = now - timedelta(seconds=float(generator.uniform(0, 86400)))
                copy.write_row((f"f{i}", 1, "m", at, None, "predict", None, None, top,
                                [confidence, *sorted(generator.uniform(0, 1 - confidence, 4), reverse=True)],
                                confidence, float(generator.uniform(0, 6.9)), None, None, None, label,
                                at if labelled else None))
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as connection:
        connection.execute(sa.text("ANALYZE predictions"))


def selection_us(batches: int = 300) -> float:
    """Microseconds of CPU to apply review rules that select nothing to one answer (the common case)."""
    from imageclf import settings
    from imageclf.workers.model.review import Selector

    repository = Path(tempfile.mkdtemp(prefix="bench-review-"))
    (repository / "m").mkdir()
    (repository / "m" / "config.json").write_text(json.dumps({"review": {"confidence_below": 0.01,
                                                                         "random_share": 0.01}}))
    settings.MODEL_REPOSITORY = str(repository)
    selector = Selector(_NoRedis())  # type: ignore[arg-type]
    probabilities = np.random.default_rng(4).dirichlet(np.full(CLASSES, 0.05), size=32).astype(np.float32)
    image = np.zeros((224, 224, 3), np.uint8)
    who = [{"request_id": f"s{i}", "route": "predict"} for i in range(32)]
    started = time.process_time()
    for _ in range(batches):
        for w, row in zip(who, probabilities):
            selector.pending("m", 1, w, row, image)
    return (time.process_time() - started) / (batches * 32) * 1e6


def keep_ms(engine: sa.Engine, kept: int, images: int = 200) -> float:
    """Milliseconds of the writer thread to keep one selected image, `kept` images already in the queue."""
    from imageclf.core.prediction_log import Pending
    from imageclf.core.review_queue import Keeper
    from imageclf.launch.redis_server import start_scratch_redis
    from imageclf.launch.supervise import ProcessGroup
    from imageclf.models.review_rules import ReviewRules

    generator = np.random.default_rng(5)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO predictions (request_id, version, model, at, route, top_ids, top_probs, confidence, entropy,"
            " review, review_file, phash) SELECT 'k' || i, 1, 'm', now(), 'predict', '{1}', '{0.5}', 0.5, 1, "
            "'{random_share}', 'x.png', (random() * 9e18)::bigint FROM generate_series(1, :n) i"), {"n": kept})
        connection.execute(sa.text("ANALYZE predictions"))
    group = ProcessGroup()
    folder = Path(tempfile.mkdtemp(prefix="bench-keep-"))
    try:
        import redis

        from imageclf import settings

        client = redis.Redis.from_url(start_scratch_redis(group, folder))
        settings.REVIEW_DIR = str(folder / "review")
        keeper, rules = Keeper(client), ReviewRules(random_share=100, max_per_day=10**9)
        pending = [rows("m", 1, [({"request_id": f"n{i}", "route": "predict",
                                   "review": Pending(generator.integers(0, 256, (224, 224, 3), np.uint8),
                                                     ["random_share"], rules)},
                                  generator.dirichlet(np.full(CLASSES, 0.05)))], time.time(), 5, 100)[0]
                   for i in range(images)]
        connection = database.connection()
        started = time.perf_counter()
        keeper.keep(connection, pending)
        elapsed = time.perf_counter() - started
        connection.close()
    finally:
        group.stop_all()
    return elapsed / images * 1000


def timed(call: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--writer-rows", type=int, default=200_000)
    parser.add_argument("--kept", type=int, default=60_000, help="images already in the review queue (2,000 a day "
                                                                  "for 30 days)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-pg-")
    user = postgres_server.prepare(folder)
    port = free_port()
    server = subprocess.Popen(postgres_server.postgres_argv(port, folder), user=user)
    url = postgres_server.database_url(port)
    try:
        assert wait_until(lambda: postgres_server.accepting(url), 30)
        from imageclf import settings

        settings.DATABASE_URL = url
        engine = database.engine()
        report: dict[str, Any] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                  "machine": f"{platform.processor() or platform.machine()}, Python "
                                             f"{platform.python_version()}", "classes": CLASSES}
        report["build_ms_per_image"] = round(build_cost_ms(), 4)
        report["writer_rows_per_s"] = round(writer_rows_per_s(url, args.writer_rows))
        with engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE predictions"))
        started = time.perf_counter()
        fill(engine, args.rows)
        report["rows"] = args.rows
        report["fill_s"] = round(time.perf_counter() - started, 1)
        labels = [f"c{i}" for i in range(CLASSES)]
        day = timedelta(hours=24)
        report["quality_24h_s"] = round(timed(lambda: quality(engine, "m", labels, day, None)), 3)
        report["quality_last_1000_s"] = round(timed(lambda: quality(engine, "m", labels, None, 1000)), 3)
        report["drift_24h_s"] = round(timed(lambda: drift(engine, "m", CLASSES, day)), 3)
        report["review_selection_us_per_image"] = round(selection_us(), 2)
        report["kept"] = args.kept
        report["review_keep_ms_per_image"] = round(keep_ms(engine, args.kept), 2)
        engine.dispose()
    finally:
        server.send_signal(2)
        server.wait(60)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text("\n".join([
            f"# The prediction log ({report['machine']}, {report['date']})", "",
            "| figure | value |", "|---|---|",
            f"| building a batch's rows in the model process (1,000 classes), per image | "
            f"{report['build_ms_per_image']} ms CPU |",
            f"| rows written per second by one writer (COPY) | {report['writer_rows_per_s']:,} |",
            f"| live quality of a version, last 24 h, {args.rows:,} rows (a fifth labelled) | "
            f"{report['quality_24h_s']} s |",
            f"| live quality, last 1,000 labelled | {report['quality_last_1000_s']} s |",
            f"| drift, last 24 h, {args.rows:,} rows | {report['drift_24h_s']} s |",
            f"| applying a model's review rules to an answer, in the model process | "
            f"{report['review_selection_us_per_image']} µs CPU |",
            f"| keeping a selected 224×224 image (hash, near-duplicate query over {args.kept:,} kept, PNG), "
            f"writer thread | {report['review_keep_ms_per_image']} ms |", ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
