"""/predict with the response cache: a hit's latency and API CPU against a computed answer, in one run.

    python -m benchmarks.cache --requests 400 --out benchmarks/results/benchmark-cache
    python -m benchmarks.cache --model resnet50 --requests 200 --out benchmarks/results/benchmark-cache-resnet50

Serves a user's `.keras` model (near-free, or ResNet50 with random weights: benchmarks.scratch_service
builds both) with CACHE_TTL_S set, and sends one photo from one sequential client, phases alternating:
`?cache=false` (decoded, queued, batched and computed every time), then the same upload with the cache (the
first request computes and stores, every later one is a hit), twice each. Reported per phase: requests,
p50/p95 of the client's latency, and the API's CPU per request (the thread that answered, from /metrics).
Figures are compared within one run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

from benchmarks.reports import publish
from benchmarks.scratch_service import scratch_service
from benchmarks.service import service_counters


def _phase(url: str, image: bytes, requests: int, cached: bool) -> dict:
    before = service_counters(url)
    latencies, hits = [], 0
    with httpx.Client(timeout=120) as http:
        for _ in range(requests):
            sent = time.perf_counter()
            response = http.post(url + "/predict", params={} if cached else {"cache": "false"},
                                 files={"image": ("photo.jpg", image)})
            latencies.append(1000 * (time.perf_counter() - sent))
            response.raise_for_status()
            hits += bool(response.json().get("cached"))
    after = service_counters(url)
    ms = sorted(latencies)
    return {"cache": cached, "requests": requests, "hits": hits, "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "api_cpu_ms": round(1000 * (after["cpu_s"] - before["cpu_s"]) / max(1, after["cpu_n"] - before["cpu_n"]),
                                3)}


def markdown(report: dict) -> str:
    lines = ["| phase | requests | hits | p50 ms | p95 ms | API CPU ms per request |", "|---|---:|---:|---:|---:|---:|"]
    for row in report["phases"]:
        lines.append(f"| {'cache' if row['cache'] else 'cache=false'} | {row['requests']} | {row['hits']} | "
                     f"{row['p50_ms']} | {row['p95_ms']} | {row['api_cpu_ms']} |")
    ratio = report["ratios"]
    lines += ["", f"- a hit: p50 × {ratio['p50']}, API CPU × {ratio['api_cpu']} of a computed answer "
                  "(means of the two phases each)"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("near-free", "resnet50"), default="near-free")
    parser.add_argument("--requests", type=int, default=400, help="requests per phase")
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    image = args.image.read_bytes()
    phases = []
    with scratch_service(args.model, {"CACHE_TTL_S": "3600"}, "cache-") as scratch:
        _phase(scratch.svc.url, image, min(20, args.requests), cached=False)  # warm-up, not reported
        for cached in (False, True, False, True):
            row = _phase(scratch.svc.url, image, args.requests, cached)
            print(json.dumps(row), flush=True)
            phases.append(row)

    def mean(cached: bool, key: str) -> float:
        return statistics.fmean(p[key] for p in phases if p["cache"] == cached)

    report = {"model": args.model, "image": args.image.name, "image_bytes": len(image), "phases": phases,
              "ratios": {"p50": round(mean(True, "p50_ms") / mean(False, "p50_ms"), 3),
                         "api_cpu": round(mean(True, "api_cpu_ms") / mean(False, "api_cpu_ms"), 3)}}
    publish(report, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
