"""One key overloading the service 10 times over its rate limit, and another key's /predict latency meanwhile.

    python -m benchmarks.quotas --seconds 10 --cycles 3 --out benchmarks/results/benchmark-quotas

Serves a user's `.keras` model (near-free, or ResNet50 with random weights: benchmarks.scratch_service
builds both) with two keys: `noisy` limited to `--rate` images/s and `quiet` without limits. One sequential
client sends /predict with `quiet`; it runs alone, then beside `noisy` sending open-loop (Poisson) requests
at `--overload` times its rate limit (from a process of its own, on asyncio with prebuilt request bytes, so the
load generator takes little of the CPU the service and quiet share), then alone again, `--cycles` times: the
phases alternate so that a shared machine's own slow drift falls on both conditions alike. Reported per
phase: quiet's requests and p50/p95, noisy's answers by status; then quiet's p50 over all phases of each
condition, and each cycle's ratio to the alone phases on either side of it. Figures are compared within one
run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from benchmarks.reports import publish
from benchmarks.scratch_service import scratch_service


def _p50(ms: list[float]) -> float:
    return round(statistics.median(ms), 1)


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

    results: multiprocessing.Queue = multiprocessing.Queue()
    sender = multiprocessing.Process(target=_noisy_process, args=(url, image, noisy_rate, seconds, results))
    if noisy_rate:
        sender.start()
    thread = threading.Thread(target=quiet)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    noisy_cpu_s = 0.0
    if noisy_rate:
        sent = results.get(timeout=60)
        noisy.update(sent["statuses"])
        noisy_cpu_s = sent["cpu_s"]
        sender.join(30)
    ms = sorted(quiet_ms)
    return {"noisy_offered_per_s": noisy_rate, "quiet_requests": len(ms), "quiet_ms": ms,
            "quiet_p50_ms": _p50(ms), "quiet_p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "noisy_by_status": {str(k): v for k, v in sorted(noisy.items())},
            "noisy_client_cpu_share": round(noisy_cpu_s / seconds, 3)}


def _request(url: str, image: bytes) -> bytes:
    """noisy's /predict upload as raw HTTP/1.1 bytes, built once."""
    parts = urlsplit(url)
    boundary = "imageclf-benchmark"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"n.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: {parts.netloc}\r\nX-API-Key: noisy\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _noisy_process(url: str, image: bytes, rate: float, seconds: float, results: multiprocessing.Queue) -> None:
    """noisy's open-loop (Poisson) arrivals at `rate`/s for `seconds`, from a process of its own (not sharing the
    quiet client's interpreter lock) on asyncio with prebuilt request bytes: a load generator costing little
    CPU, so what quiet measures is the service. Puts its {status: count} and CPU seconds on `results`."""
    statuses = asyncio.run(_arrivals(url, _request(url, image), rate, seconds))
    results.put({"statuses": statuses, "cpu_s": time.process_time()})


async def _arrivals(url: str, request: bytes, rate: float, seconds: float) -> dict[int, int]:
    parts = urlsplit(url)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    statuses: dict[int, int] = {}

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bool]:
        """(status, whether the connection stays open)."""
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await reader.readexactly(int(fields.get("content-length", 0)))
        return int(lines[0].split()[1]), fields.get("connection", "").lower() != "close"

    async def one() -> None:
        # A kept connection may have been closed by the server meanwhile (gunicorn closes one whose refused
        # upload it did not read): then the request goes again on a new one, as an HTTP client's pool does.
        for reused in ([True] if idle else []) + [False]:
            reader, writer = idle.pop() if reused else await asyncio.open_connection(parts.hostname, parts.port)
            try:
                status, kept = await send(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                writer.close()
                if reused:
                    continue
                statuses[0] = statuses.get(0, 0) + 1  # a fresh connection that broke: counted
                return
            statuses[status] = statuses.get(status, 0) + 1
            if kept:
                idle.append((reader, writer))
            else:
                writer.close()
            return

    rng = random.Random(1)
    pending = set()
    arrival = time.monotonic()
    ends = arrival + seconds
    while arrival < ends:  # arrivals on an absolute schedule: the loop's own overhead does not lower the rate
        task = asyncio.ensure_future(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        arrival += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, arrival - time.monotonic()))
    await asyncio.gather(*pending)
    for _, writer in idle:
        writer.close()
    return statuses


def markdown(report: dict) -> str:
    lines = ["| phase | noisy offered /s | noisy answers by status | noisy client's CPU (cores) | quiet requests | "
             "quiet p50 ms | quiet p95 ms |", "|---|---:|---|---:|---:|---:|---:|"]
    for row in report["phases"]:
        name = "beside noisy" if row["noisy_offered_per_s"] else "alone"
        statuses = ", ".join(f"{k}: {v}" for k, v in row["noisy_by_status"].items()) or "-"
        lines.append(f"| {name} | {row['noisy_offered_per_s']} | {statuses} | {row['noisy_client_cpu_share']} | "
                     f"{row['quiet_requests']} | {row['quiet_p50_ms']} | {row['quiet_p95_ms']} |")
    cycles = ", ".join(f"× {r}" for r in report["cycle_ratios"])
    lines += ["", f"- quiet's p50 over every phase of each condition: {report['pooled_p50_ms']['alone']} ms alone, "
                  f"{report['pooled_p50_ms']['beside']} ms beside noisy: **× {report['ratio_p50']}**; each cycle "
                  f"against the alone phases on either side: {cycles}",
              f"- noisy limited to {report['rate']} images/s, offered {report['overload']} times that; "
              f"API_WORKERS={report['api_workers']}, API_THREADS={report.get('api_threads', 32)}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("near-free", "resnet50"), default="near-free")
    parser.add_argument("--rate", type=float, default=20.0, help="noisy's rate limit, images/s")
    parser.add_argument("--overload", type=float, default=10.0, help="noisy offers this many times its limit")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--cycles", type=int, default=3, help="overload phases, each between two alone phases")
    parser.add_argument("--api-workers", type=int, default=2, help="API_WORKERS: gunicorn processes")
    parser.add_argument("--api-threads", type=int, default=32, help="API_THREADS: threads per gunicorn process")
    parser.add_argument("--image", type=Path, default=Path("../shared/assets/images/cat_720p.jpg"))
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    image = args.image.read_bytes()
    keys = f"noisy:rate={args.rate:g}/s:burst={max(1.0, args.rate):g},quiet"
    overload = args.rate * args.overload
    with scratch_service(args.model, {"API_KEYS": keys, "API_WORKERS": str(args.api_workers),
                                       "API_THREADS": str(args.api_threads)}, "quotas-") as scratch:
        url = scratch.svc.url
        _phase(url, image, min(15.0, args.seconds), 0)  # warm-up, not reported
        phases = [_phase(url, image, args.seconds, 0)]
        for _ in range(max(1, args.cycles)):
            phases += [_phase(url, image, args.seconds, overload), _phase(url, image, args.seconds, 0)]
            for row in phases[-2:]:
                print(json.dumps({k: v for k, v in row.items() if k != "quiet_ms"}), flush=True)
    alone = [ms for row in phases[0::2] for ms in row["quiet_ms"]]
    beside = [ms for row in phases[1::2] for ms in row["quiet_ms"]]
    cycle_ratios = [round(phases[i]["quiet_p50_ms"] / statistics.fmean([phases[i - 1]["quiet_p50_ms"],
                                                                        phases[i + 1]["quiet_p50_ms"]]), 2)
                    for i in range(1, len(phases), 2)]
    for row in phases:
        del row["quiet_ms"]
    report = {"model": args.model, "api_workers": args.api_workers, "api_threads": args.api_threads,
              "rate": args.rate, "overload": args.overload, "seconds": args.seconds, "cycles": args.cycles,
              "phases": phases, "pooled_p50_ms": {"alone": _p50(alone), "beside": _p50(beside)},
              "ratio_p50": round(_p50(beside) / _p50(alone), 2), "cycle_ratios": cycle_ratios}
    publish(report, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
