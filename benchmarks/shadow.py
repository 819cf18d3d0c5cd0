"""/predict latency with and without a 100 % shadow of the same model, at 1 and 16 closed-loop clients.

    python -m benchmarks.shadow --seconds 20 --out benchmarks/results/benchmark-shadow
    python -m benchmarks.shadow --seconds 20 --shadow-device cpu --out benchmarks/results/benchmark-shadow-worker

Builds ResNet50 (random weights: the real architecture and cost) as a user's `.keras` model
with two identical versions in a temporary repository and serves it with `imageclf.launch.run`.
For each client count, phases alternate off, on, off, on: the shadow is switched through
the control API (`PUT /models/<m>/policy`, `{"version": 2, "share": 100}` against default
version 1), and each phase runs the clients without pause for `--seconds`. Reported per
phase: requests, p50/p95/p99 of the client-side latency, images/s answered, and for the
shadow phases how many copies were compared and how many skipped (SHADOW_MAX_QUEUED). Then
the same alternation with open-loop (Poisson) arrivals at `--load` of the 1-client rate: a
service with spare capacity, where closed-loop clients keep the worker always busy.
Figures are compared within one run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from imageclf.launch.redis_server import start_scratch_redis
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import ProcessGroup, wait_until

ADMIN = "benchmark-admin"
MODEL = "resnet"


def _repository(work: Path) -> Path:
    import keras

    repo = work / "repository"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "labels.txt").write_text("\n".join(f"class_{i}" for i in range(1000)) + "\n")
    (repo / MODEL / "config.json").write_text(json.dumps({"preprocess": "caffe", "version_policy": {"all": True},
                                                          "traffic": {"default": 1}}))
    keras.utils.set_random_seed(1)
    keras.applications.ResNet50(weights=None).save(repo / MODEL / "1" / "model.keras")
    shutil.copytree(repo / MODEL / "1", repo / MODEL / "2")
    return repo


def _entry(url: str) -> dict:
    return next(m for m in httpx.get(url + "/models", timeout=30).json()["models"] if m["name"] == MODEL)


def _set_shadow(url: str, on: bool) -> None:
    body = {"shadow": {"version": 2, "share": 100} if on else None}
    response = httpx.put(f"{url}/models/{MODEL}/policy", json=body, headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=30)
    response.raise_for_status()
    applied = response.json()["policy"]
    assert wait_until(lambda: _entry(url).get("policy") == applied, 60, 0.2), "the policy was not applied"
    time.sleep(1.5)  # the API's routing cache


def _shadow_counts(url: str) -> tuple[int, int]:
    pairs = _entry(url)["versions"].get("2", {}).get("shadow", [])
    pair = next((p for p in pairs if p["against"] == 1), {})
    return pair.get("compared", 0), pair.get("skipped", 0)


def _drain(url: str, timeout_s: float = 120) -> None:
    """Wait until the shadow copies of the last phase are computed or skipped (the bulk queue is empty)."""
    previous = None

    def settled() -> bool:
        nonlocal previous
        now = _shadow_counts(url)
        same, previous = now == previous, now
        return same

    wait_until(settled, timeout_s, 2.0)


def _phase(url: str, image: bytes, clients: int, seconds: float, rate: float = 0.0) -> dict:
    """`clients` closed-loop clients for `seconds`; with `rate`, open-loop Poisson arrivals at `rate`/s instead."""
    latencies: list[float] = []
    errors = [0]
    stop = threading.Event()

    def one(http: httpx.Client) -> None:
        sent = time.perf_counter()
        response = http.post(url + "/predict", files={"image": ("cat.jpg", image)})
        if response.status_code == 200:
            latencies.append(time.perf_counter() - sent)
        else:
            errors[0] += 1

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                one(http)

    def arrivals() -> None:
        rng = random.Random(1)
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64)) as http, \
                ThreadPoolExecutor(64) as pool:
            while not stop.is_set():
                pool.submit(one, http)
                time.sleep(rng.expovariate(rate))

    before = _shadow_counts(url)
    threads = [threading.Thread(target=arrivals)] if rate else [threading.Thread(target=client)
                                                                 for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    _drain(url)
    after = _shadow_counts(url)
    ms = sorted(1000 * v for v in latencies)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 1) if ms else 0.0

    return {"requests": len(ms), "errors": errors[0], "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else 0.0, "images_per_s": round(len(ms) / elapsed, 1),
            "shadow_compared": after[0] - before[0], "shadow_skipped": after[1] - before[1]}


def markdown(report: dict) -> str:
    lines = ["| clients | shadow | requests | p50 ms | p95 ms | p99 ms | img/s | shadow compared | skipped |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["phases"]:
        copies = f"{row['shadow_compared']} | {row['shadow_skipped']}" if row["shadow"] else " | "
        lines.append(f"| {row['clients']} | {'100 %' if row['shadow'] else 'off'} | {row['requests']} | "
                     f"{row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | {row['images_per_s']} | {copies} |")
    lines.append("")
    for clients, ratio in report["ratios"].items():
        who = f"{clients} client(s)" if clients.isdigit() else clients
        lines.append(f"- {who}: with the shadow, p50 × {ratio['p50']}, p95 × {ratio['p95']}, "
                     f"images/s × {ratio['images_per_s']} (means of the two phases each)")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("--load", type=float, default=0.4,
                        help="also an open-loop phase at this share of the 1-client rate without the shadow (0: none)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    parser.add_argument("--shadow-device", default="", help="SHADOW_DEVICE for the service (cpu: a shadow worker at "
                        "the lowest priority; empty: copies in the model worker's bulk lane)")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    image = args.image.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="shadow-"))
    group = ProcessGroup()
    try:
        repo = _repository(work)
        redis_url = start_scratch_redis(group, work)
        svc = ServiceProcess(env={"REDIS_URL": redis_url, "MODEL_REPOSITORY": str(repo), "MODELS": MODEL,
                                  "MODEL_POLL_S": "1", "ADMIN_API_KEYS": ADMIN, "UPLOAD_DIR": str(work / "uploads"),
                                  "SHADOW_DEVICE": args.shadow_device},
                             log_path=work / "service.log").start()
        try:
            phases = []
            for clients in (int(c) for c in args.clients.split(",")):
                _phase(svc.url, image, clients, min(5.0, args.seconds))  # warm-up, not reported
                for on in (False, True, False, True):
                    _set_shadow(svc.url, on)
                    row = {"clients": clients, "shadow": on, **_phase(svc.url, image, clients, args.seconds)}
                    print(json.dumps(row), flush=True)
                    phases.append(row)
                _set_shadow(svc.url, False)
            closed = [p["images_per_s"] for p in phases if p["clients"] == 1 and not p["shadow"]]
            if args.load and closed:
                rate = round(args.load * statistics.fmean(closed), 2)
                for on in (False, True, False, True):
                    _set_shadow(svc.url, on)
                    row = {"clients": f"open loop {rate}/s", "shadow": on,
                           **_phase(svc.url, image, 0, args.seconds, rate)}
                    print(json.dumps(row), flush=True)
                    phases.append(row)
                _set_shadow(svc.url, False)
            worker = next(w for w in _entry(svc.url)["workers"] if w["role"] == "model")
        finally:
            svc.stop()
    finally:
        group.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    def mean(clients: int | str, on: bool, key: str) -> float:
        return statistics.fmean(p[key] for p in phases if p["clients"] == clients and p["shadow"] == on)

    loads = list(dict.fromkeys(p["clients"] for p in phases))
    ratios = {str(c): {k: round(mean(c, True, k) / mean(c, False, k), 2) for k in ("p50_ms", "p95_ms", "images_per_s")}
              for c in loads}
    ratios = {c: {"p50": r["p50_ms"], "p95": r["p95_ms"], "images_per_s": r["images_per_s"]} for c, r in ratios.items()}
    report = {"model": "ResNet50 (random weights), two identical versions", "seconds_per_phase": args.seconds,
              "shadow_device": args.shadow_device or "(the model worker's bulk lane)",
              "batch_size": worker.get("batch_size"), "backend": worker.get("backend"), "phases": phases,
              "ratios": ratios}
    print(markdown(report))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
