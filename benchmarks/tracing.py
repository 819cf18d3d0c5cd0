"""What OpenTelemetry tracing costs /predict: latency and CPU per request with traces off and on, in one run.

    python -m benchmarks.tracing --requests 300 --out benchmarks/results/benchmark-tracing

Serves the near-free model (benchmarks.scratch_service) four times in turn, tracing off, on, off, on (it is
chosen when the processes start), and sends one photo from one sequential client each time. With tracing on,
every process exports over OTLP/HTTP to a receiver in this process (benchmarks.otlp_receiver), so the exporters'
threads do their real work. Reported per phase: p50/p95 of the client's latency, the API's CPU per request
(the thread that answered, from /metrics), every service process's CPU per request by role (the exporter
threads included), and spans received per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.otlp_receiver import OTLPReceiver
from benchmarks.reports import publish
from benchmarks.scratch_service import scratch_service
from benchmarks.service import CpuMeter, service_counters


def _phase(url: str, image: bytes, requests: int, meter: CpuMeter) -> dict:
    with httpx.Client(timeout=120) as http:
        for _ in range(min(20, requests)):  # warm-up, not counted
            http.post(url + "/predict", files={"image": ("photo.jpg", image)}).raise_for_status()
        before, cpu_before = service_counters(url), meter.by_role()
        latencies = []
        for _ in range(requests):
            sent = time.perf_counter()
            http.post(url + "/predict", files={"image": ("photo.jpg", image)}).raise_for_status()
            latencies.append(1000 * (time.perf_counter() - sent))
    time.sleep(6.0)  # past the exporters' 5 s schedule (OTEL_BSP_SCHEDULE_DELAY), so their CPU is counted
    after, cpu_after = service_counters(url), meter.by_role()
    ms = sorted(latencies)
    answered = max(1, after["cpu_n"] - before["cpu_n"])
    return {"requests": requests, "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "api_thread_cpu_ms": round(1000 * (after["cpu_s"] - before["cpu_s"]) / answered, 3),
            "cpu_ms_by_role": {role: round(1000 * (cpu_after[role] - cpu_before.get(role, 0.0)) / requests, 3)
                               for role in sorted(cpu_after)}}


def markdown(report: dict) -> str:
    roles = sorted({r for p in report["phases"] for r in p["cpu_ms_by_role"]})
    lines = ["| tracing | requests | p50 ms | p95 ms | API thread CPU ms | " +
             " | ".join(f"{r} CPU ms" for r in roles) + " | spans per request |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(roles) + "---:|"]
    for row in report["phases"]:
        lines.append(f"| {'on' if row['tracing'] else 'off'} | {row['requests']} | {row['p50_ms']} | "
                     f"{row['p95_ms']} | {row['api_thread_cpu_ms']} | " +
                     " | ".join(str(row["cpu_ms_by_role"].get(r, 0)) for r in roles) +
                     f" | {row['spans_per_request']} |")
    ratio = report["ratios"]
    traced = next((p for p in report["phases"] if p["tracing"]), None)
    if traced:
        lines += ["", "Spans per request, by name (tracing on): " +
                  ", ".join(f"{name} {n}" for name, n in traced["spans_by_name"].items())]
    lines += ["", f"- tracing on: p50 × {ratio['p50']}, API thread CPU × {ratio['api_thread_cpu']}, all service "
                  f"processes' CPU × {ratio['service_cpu']} (means of the two phases each)"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per phase")
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    image = args.image.read_bytes()
    receiver = OTLPReceiver()
    phases = []
    try:
        for traced in (False, True, False, True):
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint} if traced else {}
            with scratch_service("near-free", {**env, "API_WORKERS": "1"}, "tracing-") as scratch:
                meter = CpuMeter(scratch.svc.proc.pid, [scratch.svc.proc.pid])
                spans_before = len(receiver.spans)
                row = {"tracing": traced, **_phase(scratch.svc.url, image, args.requests, meter)}
            # Counted once the service stopped: its processes export what they still held as they end.
            names = Counter(span["name"] for span in receiver.spans[spans_before:])
            sent = args.requests + min(20, args.requests)
            row["spans_per_request"] = round(sum(names.values()) / sent, 2)
            row["spans_by_name"] = {name: round(n / sent, 2) for name, n in sorted(names.items())}
            print(json.dumps(row), flush=True)
            phases.append(row)
    finally:
        receiver.stop()

    def mean(traced: bool, key: str) -> float:
        return statistics.fmean(p[key] for p in phases if p["tracing"] == traced)

    def service_cpu(traced: bool) -> float:
        return statistics.fmean(sum(p["cpu_ms_by_role"].values()) for p in phases if p["tracing"] == traced)

    report = {"model": "near-free", "image": args.image.name, "phases": phases,
              "ratios": {"p50": round(mean(True, "p50_ms") / mean(False, "p50_ms"), 3),
                         "api_thread_cpu": round(mean(True, "api_thread_cpu_ms") / mean(False, "api_thread_cpu_ms"), 3),
                         "service_cpu": round(service_cpu(True) / service_cpu(False), 3)}}
    publish(report, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
