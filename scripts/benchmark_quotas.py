"""One key overloading the service 10 times over its rate limit, and another key's /predict latency meanwhile.

    python -m scripts.benchmark_quotas --seconds 20 --out docs/benchmark-quotas

Serves a user's `.keras` model (near-free, or ResNet50 with random weights: scripts.scratch_service
builds both) with two keys: `noisy` limited to `--rate` images/s and `quiet` without limits. One sequential
client sends /predict with `quiet`; it runs alone, then beside `noisy` sending open-loop (Poisson) requests
at `--overload` times its rate limit, then alone again. Reported per phase: quiet's requests and p50/p95,
noisy's answers by status. Figures are compared within one run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scripts.scratch_service import scratch_service


def _phase(url: str, image: bytes, seconds: float, noisy_rate: float) -> dict:
    """quiet's sequential requests for `seconds`, beside noisy's arrivals at `noisy_rate`/s (0: none)."""
    stop = threading.Event()
    quiet_ms: list[float] = []
    noisy: dict[int, int] = {}

    def quiet() -> None:
        with httpx.Client(timeout=120, headers={"X-API-Key": "quiet"}) as http:
            while not stop.is_set():
                sent = time.perf_counter()
                if http.post(url + "/predict", files={"image": ("q.jpg", image)}).status_code == 200:
                    quiet_ms.append(1000 * (time.perf_counter() - sent))

    def one(http: httpx.Client) -> None:
        status = http.post(url + "/predict", files={"image": ("n.jpg", image)}).status_code
        noisy[status] = noisy.get(status, 0) + 1

    def arrivals() -> None:
        rng = random.Random(1)
        with httpx.Client(timeout=120, headers={"X-API-Key": "noisy"},
                          limits=httpx.Limits(max_connections=64)) as http, ThreadPoolExecutor(64) as pool:
            while not stop.is_set():
                pool.submit(one, http)
                time.sleep(rng.expovariate(noisy_rate))

    threads = [threading.Thread(target=quiet)] + ([threading.Thread(target=arrivals)] if noisy_rate else [])
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    ms = sorted(quiet_ms)
    return {"noisy_offered_per_s": noisy_rate, "quiet_requests": len(ms),
            "quiet_p50_ms": round(statistics.median(ms), 1), "quiet_p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "noisy_by_status": {str(k): v for k, v in sorted(noisy.items())}}


def markdown(report: dict) -> str:
    lines = ["| phase | noisy offered /s | noisy answers by status | quiet requests | quiet p50 ms | quiet p95 ms |",
             "|---|---:|---|---:|---:|---:|"]
    for name, row in zip(("alone", "beside noisy", "alone again"), report["phases"]):
        statuses = ", ".join(f"{k}: {v}" for k, v in row["noisy_by_status"].items()) or "-"
        lines.append(f"| {name} | {row['noisy_offered_per_s']} | {statuses} | {row['quiet_requests']} | "
                     f"{row['quiet_p50_ms']} | {row['quiet_p95_ms']} |")
    lines += ["", f"- quiet's p50 beside noisy: × {report['ratio_p50']} its value alone (mean of the two alone "
                  f"phases); noisy limited to {report['rate']} images/s, offered {report['overload']} times that"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("near-free", "resnet50"), default="near-free")
    parser.add_argument("--rate", type=float, default=20.0, help="noisy's rate limit, images/s")
    parser.add_argument("--overload", type=float, default=10.0, help="noisy offers this many times its limit")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    image = args.image.read_bytes()
    keys = f"noisy:rate={args.rate:g}/s:burst={max(1.0, args.rate):g},quiet"
    with scratch_service(args.model, {"API_KEYS": keys}, "quotas-") as scratch:
        url = scratch.svc.url
        _phase(url, image, min(15.0, args.seconds), 0)  # warm-up, not reported
        phases = [_phase(url, image, args.seconds, rate) for rate in (0, args.rate * args.overload, 0)]
        for row in phases:
            print(json.dumps(row), flush=True)
    alone = statistics.fmean([phases[0]["quiet_p50_ms"], phases[2]["quiet_p50_ms"]])
    report = {"model": args.model, "rate": args.rate, "overload": args.overload, "seconds": args.seconds,
              "phases": phases, "ratio_p50": round(phases[1]["quiet_p50_ms"] / alone, 2)}
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
