"""Soak test: drive twice the service's capacity for N minutes; nothing accepted may be lost,
memory must not climb without bound.

    python -m benchmarks.soak --minutes 5                       # ResNet50 random weights
    python -m benchmarks.soak --minutes 5 --model mobilenet_v1_0.75 \\
        --weights ../shared/assets/models/mobilenet_v1_0.75_224_imagenet.keras

It starts the service (its own Redis), measures capacity with 16 closed-loop clients, then
submits open-loop at 2x that rate with `timeout=0` (every accepted request answers 202 at
once, an overloaded queue answers 503). Every 10 s it samples the resident memory of the
API and worker processes. At the end it waits for the queue to drain and checks that every
accepted id has its result. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from benchmarks.service import DEFAULT_PHOTO, LocalService, e2e, test_jpeg


def rss_by_part(root_pid: int) -> dict[str, float]:
    """Resident MiB of the API (gunicorn), model worker and decoder worker processes under `root_pid`."""
    parts = {"api": 0.0, "worker": 0.0, "decoder": 0.0}
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        if "gunicorn" in cmd:
            parts["api"] += rss
        elif "celery" in cmd and " worker" in cmd:
            parts["decoder" if "--queues jobs" in cmd else "worker"] += rss
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--class-index", default=os.environ.get("CLASS_INDEX", ""))
    parser.add_argument("--max-queue-depth", type=int, default=200)
    args = parser.parse_args()

    image = test_jpeg(DEFAULT_PHOTO)
    env = {"MODEL": args.model, "MODEL_WEIGHTS": args.weights, "CLASS_INDEX": args.class_index,
           "MAX_QUEUE_DEPTH": str(args.max_queue_depth), "BATCH_SIZE": "8"}
    with LocalService(env, Path(tempfile.gettempdir()) / "soak-service.log") as svc:
        from tqdm import tqdm

        with tqdm(total=64, desc="capacity") as bar:
            capacity = e2e(svc.url, image, 16, 64, bar)["images_per_s"]
        rate = 2 * capacity
        counts = {"submitted": 0, "accepted": 0, "refused_503": 0, "other": 0}
        accepted: list[str] = []
        samples: list[dict] = []
        lock = threading.Lock()
        stop = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.is_set():
                samples.append({"t_s": round(time.monotonic() - start), **rss_by_part(svc.proc.pid)})
                stop.wait(10)

        def submit(client: httpx.Client) -> None:
            try:
                r = client.post(svc.url + "/predict", params={"timeout": 0}, files={"image": ("s.jpg", image)})
                kind = {202: "accepted", 200: "accepted", 503: "refused_503"}.get(r.status_code, "other")
            except httpx.HTTPError:
                kind, r = "other", None
            with lock:
                counts["submitted"] += 1
                counts[kind] += 1
                if kind == "accepted":
                    accepted.append(r.json()["id"])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.monotonic() + 60 * args.minutes
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(32) as pool:
            next_at = time.monotonic()
            while next_at < deadline:
                pool.submit(submit, client)
                next_at += 1.0 / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
        # Drain: every accepted id must be answered.
        drain_deadline = time.monotonic() + 600
        pending = list(accepted)
        with httpx.Client(timeout=30) as client:
            while pending and time.monotonic() < drain_deadline:
                pending = [i for i in pending
                           if client.get(f"{svc.url}/result/{i}").json().get("status") not in ("SUCCESS",)]
                time.sleep(2)
        stop.set()
        samples.append({"t_s": "end", **rss_by_part(svc.proc.pid)})
    report = {"capacity_images_per_s": capacity, "offered_rate_per_s": rate, "minutes": args.minutes, **counts,
              "answered": len(accepted) - len(pending), "unanswered": len(pending), "rss_mib": samples}
    print(json.dumps(report, indent=1))
    return 0 if not pending else 1


if __name__ == "__main__":
    sys.exit(main())
