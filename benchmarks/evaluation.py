"""An evaluation job of 2,000 and of 20,000 images: memory of every process over the run, and /predict latency
while it runs.

    python -m benchmarks.evaluation --images 2000,20000 --out benchmarks/results/benchmark-evaluation
    python -m benchmarks.evaluation --model resnet50 --images 300 --out benchmarks/results/benchmark-evaluation-resnet50

Builds a user's `.keras` model, either near-free (mean colour, then a softmax over 10 classes:
the service's own work is what is measured, not the model's) or ResNet50 with random weights
(a real model's cost, for the latency of /predict beside the evaluation), and an ImageFolder
zip of small JPEGs labelled with 10 of its classes, and serves it with `imageclf.launch.run`. For each
size, one client sends /predict without pause for `--idle` seconds, then the evaluation is
submitted and the client goes on until it ends. Every `--every` seconds the resident memory of
each process of the service is summed by role (API, decoders, model worker, Flower, Redis's used
memory and the part of it holding the job's gathered answers) with the job's progress. Reported
per size: images/s of the evaluation, memory before, at a quarter, at nine tenths and at the
peak, and the client's p50/p95 idle and during the evaluation. Flat memory means the
20,000-image run peaks where the 2,000-image run does. Figures are compared within one run (the
machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import redis

from benchmarks.reports import publish
from benchmarks.scratch_service import SIZE, scratch_service
from imageclf.launch.service_process import ServiceProcess

#: Which role a process of the service plays, by a piece of its command line (first match wins).
_ROLES = (("gunicorn", "api"), ("flower", "flower"), ("--queues jobs", "decoders"), ("celery", "model worker"))


def _labelled_zip(path: Path, count: int, classes: list[str]) -> None:
    """`count` JPEGs of one colour each in ImageFolder layout, labelled round-robin with `classes`."""
    from PIL import Image

    rng = np.random.default_rng(count)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            buffer = io.BytesIO()
            Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in rng.integers(0, 256, 3))).save(buffer, "JPEG")
            archive.writestr(f"held_out/{classes[i % len(classes)]}/{i:06d}.jpg", buffer.getvalue())


def _memory_by_role(root_pid: int, redis_url: str, job_id: str = "") -> dict[str, float]:
    """Resident megabytes of the service's processes summed by role, Redis's used memory, and the part of it
    that holds the job's gathered answers."""
    import psutil

    roles: dict[str, float] = {}
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            line, rss = " ".join(process.cmdline()), process.memory_info().rss
        except psutil.Error:  # exited meanwhile
            continue
        role = next((name for key, name in _ROLES if key in line), None)
        if role:
            roles[role] = roles.get(role, 0.0) + rss / 2**20
    client = redis.Redis.from_url(redis_url)
    roles["redis (used)"] = client.info("memory")["used_memory"] / 2**20
    roles["redis: the job's answers"] = (client.memory_usage(f"imageclf:job:{job_id}:items", samples=0) or 0) / 2**20
    return {role: round(mb, 1) for role, mb in roles.items()}


class _Client(threading.Thread):
    """One client sending /predict without pause; latencies are kept by phase."""

    def __init__(self, url: str, image: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.image = url, image
        self.phase = "idle"
        self.latencies: dict[str, list[float]] = {"idle": [], "during": []}
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                phase, sent = self.phase, time.perf_counter()
                response = http.post(self.url + "/predict", files={"image": ("x.jpg", self.image)})
                if response.status_code == 200:
                    self.latencies[phase].append(1000 * (time.perf_counter() - sent))
                else:
                    self.errors += 1

    def figures(self, phase: str) -> dict[str, float]:
        ms = sorted(self.latencies[phase])
        return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 1) if ms else 0.0,
                "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1) if ms else 0.0}


def _run(svc: ServiceProcess, redis_url: str, archive: Path, image: bytes, idle_s: float, every_s: float) -> dict:
    client = _Client(svc.url, image)
    client.start()
    time.sleep(idle_s)
    before = _memory_by_role(svc.proc.pid, redis_url)
    client.phase = "during"
    started = time.perf_counter()
    with open(archive, "rb") as f:
        submitted = httpx.post(svc.url + "/jobs", data={"evaluate": "true"}, files={"images": (archive.name, f)},
                               timeout=600)
    submitted.raise_for_status()
    samples = []
    while True:
        body = httpx.get(svc.url + submitted.json()["result_url"], timeout=60).json()
        samples.append({"t": round(time.perf_counter() - started, 1), "done": body.get("done", 0),
                        "total": body["total"], **_memory_by_role(svc.proc.pid, redis_url, body["id"])})
        if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            break
        time.sleep(every_s)
    elapsed = time.perf_counter() - started
    client.stop.set()
    client.join()
    assert body["status"] == "SUCCESS", body.get("error")
    figures = body["result"]["versions"]["1"]
    total = body["total"]

    def at(share: float) -> dict[str, float]:
        sample = next((s for s in samples if s["done"] >= share * total), samples[-1])
        return {k: v for k, v in sample.items() if k not in ("t", "done", "total")}

    roles = list(before)
    peak = {role: max(s.get(role, 0.0) for s in samples) for role in roles}
    return {"images": total, "seconds": round(elapsed, 1), "images_per_s": round(total / elapsed, 1),
            "accuracy": figures["accuracy"], "memory_mb": {"before": before, "quarter": at(0.25),
                                                           "nine_tenths": at(0.9), "peak": peak},
            "predict_idle": client.figures("idle"), "predict_during": client.figures("during"),
            "predict_errors": client.errors, "samples": samples}


def markdown(report: dict) -> str:
    roles = list(report["runs"][0]["memory_mb"]["before"])
    lines = ["| images | img/s | role | MB before | at 25 % | at 90 % | peak |", "|---:|---:|---|---:|---:|---:|---:|"]
    for run in report["runs"]:
        memory = run["memory_mb"]
        for role in roles:
            lines.append(f"| {run['images']} | {run['images_per_s']} | {role} | {memory['before'].get(role)} | "
                         f"{memory['quarter'].get(role)} | {memory['nine_tenths'].get(role)} | "
                         f"{memory['peak'].get(role)} |")
    lines += ["", "| images | /predict requests idle | p50 idle ms | p95 idle ms | requests during | p50 during ms | "
              "p95 during ms | p50 × | p95 × |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        idle, during = run["predict_idle"], run["predict_during"]
        lines.append(f"| {run['images']} | {idle['requests']} | {idle['p50_ms']} | {idle['p95_ms']} | "
                     f"{during['requests']} | {during['p50_ms']} | {during['p95_ms']} | "
                     f"{during['p50_ms'] / idle['p50_ms']:.2f} | {during['p95_ms'] / idle['p95_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("near-free", "resnet50"), default="near-free")
    parser.add_argument("--images", default="2000,20000", help="comma-separated dataset sizes")
    parser.add_argument("--idle", type=float, default=15.0, help="seconds of /predict before each evaluation")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    image = args.image.read_bytes()
    runs = []
    with scratch_service(args.model, {"MAX_JOB_UPLOAD_MB": "4096"}, "evaluation-") as scratch:
        for count in (int(n) for n in args.images.split(",")):
            archive = scratch.work / f"held_out_{count}.zip"
            _labelled_zip(archive, count, scratch.classes)
            run = _run(scratch.svc, scratch.redis_url, archive, image, args.idle, args.every)
            print(json.dumps({k: v for k, v in run.items() if k != "samples"}), flush=True)
            runs.append(run)
    report = {"model": ("ResNet50, random weights" if args.model == "resnet50" else
                        "mean colour + softmax, 10 classes, 64x64 (near-free)"), "runs": runs}
    publish(report, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
