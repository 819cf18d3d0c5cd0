"""How long requests held by a killed model worker take to be answered by its successor.

    python -m benchmarks.redelivery --visibility 15,300 --out benchmarks/results/benchmark-redelivery

For each VISIBILITY_TIMEOUT_S it starts the service (its own Redis, the shared MobileNet, one model worker),
freezes the model's pool process (SIGSTOP) so that 16 /predict requests (`timeout=0`) are all taken by the
worker and held unacknowledged, then kills with SIGKILL either
- the pool process (`child`): its main process sees the batch lost and puts its requests back, or
- the worker's main process (`main`): nobody renews its requests any more, so another consumer of the broker
  restores them after the visibility timeout,
and times from the kill until every request is answered. The supervisor restarts what died meanwhile, so the
figure includes a model load (MobileNet: a few seconds).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from benchmarks import ROOT
from benchmarks.reports import publish
from benchmarks.service import LocalService
from imageclf.core.readiness import live_workers
from imageclf.launch.supervise import wait_until

SHARED = ROOT.parent / "shared" / "assets"
MODEL = "mobilenet_v1_0.75"
REQUESTS = 16


def model_pid(client: redis.Redis, not_pid: int | None = None) -> int:
    found: list[int] = []

    def ready() -> bool:
        found[:] = [w["pid"] for w in live_workers(client) if w.get("role") == "model" and w["pid"] != not_pid]
        return bool(found)

    if not wait_until(ready, 300, interval_s=0.05):
        raise SystemExit("no model process came up")
    return found[0]


def held_then_killed(svc: LocalService, client: redis.Redis, which: str, photo: bytes) -> float:
    """Seconds from killing `which` ("child" or "main") until all REQUESTS held by the worker are answered."""
    child = model_pid(client)
    os.kill(child, signal.SIGSTOP)
    ids = []
    for _ in range(REQUESTS):
        response = httpx.post(svc.url + "/predict", params={"timeout": "0"}, files={"image": photo}, timeout=30)
        response.raise_for_status()
        ids.append(response.json()["id"])
    if not wait_until(lambda: client.llen(f"interactive.{MODEL}") == 0, 30):
        raise SystemExit("the worker did not take the requests")
    time.sleep(0.5)
    victim = child if which == "child" else psutil.Process(child).ppid()
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    pending = set(ids)
    while pending:
        for task_id in list(pending):
            body = httpx.get(f"{svc.url}/result/{task_id}", timeout=10).json()
            if body["status"] == "SUCCESS":
                pending.discard(task_id)
            elif body["status"] in ("FAILURE", "REVOKED"):
                raise SystemExit(f"request {task_id} ended {body}")
        time.sleep(0.1)
        if time.monotonic() - killed > 900:
            raise SystemExit(f"{len(pending)} requests unanswered after 900 s")
    seconds = time.monotonic() - killed
    model_pid(client, not_pid=child)  # the successor is up before the next round
    return seconds


def run(visibilities: list[int]) -> dict[str, Any]:
    photo = (SHARED / "images" / "cat_720p.jpg").read_bytes()
    rows = []
    for visibility in visibilities:
        env = {"MODEL": MODEL, "MODEL_WEIGHTS": str(SHARED / "models" / "mobilenet_v1_0.75_224_imagenet.keras"),
               "CLASS_INDEX": str(SHARED / "imagenet_class_index.json"), "BATCH_SIZE": "8",
               "VISIBILITY_TIMEOUT_S": str(visibility), "UPLOAD_DIR": tempfile.mkdtemp(prefix="redelivery-")}
        with LocalService(env, Path(tempfile.gettempdir()) / "redelivery-service.log") as svc:
            client = redis.Redis.from_url(svc.redis_url)
            for which in ("child", "main"):
                seconds = held_then_killed(svc, client, which, photo)
                rows.append({"visibility_timeout_s": visibility, "killed": which,
                             "answered_after_s": round(seconds, 1)})
                print(rows[-1], file=sys.stderr, flush=True)
    return {"model": MODEL, "requests": REQUESTS, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Requests held by a killed model worker ({report['requests']} requests, {report['model']})", "",
             "| VISIBILITY_TIMEOUT_S | process killed | all answered after, s |", "|---|---|---|"]
    lines += [f"| {r['visibility_timeout_s']} | {r['killed']} | {r['answered_after_s']} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visibility", default="15,300", help="VISIBILITY_TIMEOUT_S values, comma-separated")
    parser.add_argument("--out", type=Path, help="write the report as <out>.json and <out>.md")
    args = parser.parse_args()
    publish(run([int(v) for v in args.visibility.split(",")]), args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
