"""Roll a new version of a ResNet50-sized repository model out, and back, under closed-loop load.

    python -m benchmarks.rollout --clients 16

Builds ResNet50 (random weights, the real architecture and size) as a user's `.keras`
model in a temporary repository, serves it with `imageclf.launch.run`, and while the clients
send without pause: adds version 2, waits until answers carry it, deletes it, waits
until answers carry version 1 again. Prints requests, errors, the slowest request
before and during each switch, how long each switch took after the folder changed,
and the worker's RSS with one version and with two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from imageclf.launch.redis_server import start_scratch_redis
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import ProcessGroup, wait_until


def _save_resnet(folder: Path, seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    folder.mkdir(parents=True)
    keras.applications.ResNet50(weights=None).save(folder / "model.keras")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    args = parser.parse_args()
    image = args.image.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="rollout-"))
    repo = work / "repository"
    (repo / "resnet").mkdir(parents=True)
    (repo / "resnet" / "labels.txt").write_text("\n".join(f"class_{i}" for i in range(1000)) + "\n")
    (repo / "resnet" / "config.json").write_text(json.dumps({"preprocess": "caffe"}))
    _save_resnet(repo / "resnet" / "1", seed=1)
    _save_resnet(work / "v2", seed=2)

    group = ProcessGroup()
    redis_url = start_scratch_redis(group, work)
    svc = ServiceProcess(env={"REDIS_URL": redis_url, "MODEL_REPOSITORY": str(repo), "MODELS": "resnet",
                              "MODEL_POLL_S": "2", "UPLOAD_DIR": str(work / "uploads")},
                         log_path=work / "service.log").start()
    answers: list[tuple[float, float, int, int | None]] = []  # sent, received, status, version
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                sent = time.monotonic()
                r = http.post(svc.url + "/predict", params={"model": "resnet"}, files={"image": image})
                answers.append((sent, time.monotonic(), r.status_code, r.json().get("model_version")))

    def worker() -> dict:
        return httpx.get(svc.url + "/models", timeout=10).json()["models"][0]["workers"][0]

    try:
        rss_one = worker()["rss_mb"]
        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(10)
        added = time.monotonic()
        shutil.move(str(work / "v2"), str(repo / "resnet" / "2"))
        assert wait_until(lambda: any(a[3] == 2 for a in answers), 300, 0.05)
        switched = min(a[1] for a in answers if a[3] == 2)
        rss_two = worker()["rss_mb_two_versions"]
        time.sleep(10)
        removed = time.monotonic()
        shutil.rmtree(repo / "resnet" / "2")
        assert wait_until(lambda: any(a[3] == 1 and a[0] > removed for a in answers), 300, 0.05)
        back = min(a[1] for a in answers if a[3] == 1 and a[0] > removed)
        time.sleep(5)
        stop.set()
        for t in threads:
            t.join()
        rss_after = worker()["rss_mb"]
    finally:
        svc.stop()
        group.stop_all()
        loads = [line.split("] ", 1)[-1] for line in svc.log_path.read_text().splitlines() if "loaded in" in line]
        shutil.rmtree(work, ignore_errors=True)

    def latencies(lo: float, hi: float) -> list[float]:
        """Requests that were in flight at some moment of [lo, hi]."""
        return sorted(r - s for s, r, _, _ in answers if lo <= r and s <= hi)

    def slowest(lo: float, hi: float) -> float:
        return round(latencies(lo, hi)[-1], 3)

    def p90(lo: float, hi: float) -> float:
        during = latencies(lo, hi)
        return round(during[int(0.9 * (len(during) - 1))], 3)

    report = {
        "clients": args.clients, "requests": len(answers), "errors": sum(a[2] != 200 for a in answers),
        "p50_s": round(statistics.median(r - s for s, r, _, _ in answers), 3),
        "p90_before_s": p90(0, added), "p90_during_rollout_s": p90(added, switched),
        "p90_during_rollback_s": p90(removed, back),
        "slowest_before_s": slowest(0, added), "slowest_during_rollout_s": slowest(added, switched),
        "slowest_during_rollback_s": slowest(removed, back),
        "rollout_after_s": round(switched - added, 2), "rollback_after_s": round(back - removed, 2),
        "rss_mb_one_version": rss_one, "rss_mb_two_versions": rss_two, "rss_mb_after": rss_after,
        "cpu_cores": os.cpu_count(), "worker_log": loads,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
