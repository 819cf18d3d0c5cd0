"""Adding model workers: throughput with 1, then 2 CPU model workers, each pinned to its own core, and
what each image costs Redis (commands and bytes), from which the limit of N GPU hosts follows; and what
waiting for a replica (REDIS_WAIT_REPLICAS) adds to accepting a request.

    python -m benchmarks.scaling                     # ResNet50 random weights, 32 clients
    python -m benchmarks.scaling --workers 1,2 --clients 32 --requests 256

Per worker count it starts its own Redis, one gunicorn API and N `celery worker` processes under
`taskset -c <core>` (TensorFlow sizes its thread pool to the cores it may use), sends real
multipart uploads of a 1024x768 JPEG from closed-loop clients, and reads Redis' own counters
(INFO: commands processed, network bytes in and out) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
from tqdm import tqdm

from benchmarks import ROOT
from benchmarks.service import DEFAULT_PHOTO, e2e, machine, test_jpeg
from imageclf.core.celery_app import CELERY_APP
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import wait_until


def redis_counters(client: redis.Redis) -> dict[str, float]:
    """Commands, network bytes and CPU seconds (user + system) Redis has spent since it started."""
    stats, cpu = client.info("stats"), client.info("cpu")
    return {"commands": stats["total_commands_processed"], "bytes_in": stats["total_net_input_bytes"],
            "bytes_out": stats["total_net_output_bytes"],
            "cpu_ms": 1000 * (cpu["used_cpu_sys"] + cpu["used_cpu_user"])}


def wait_cost(rounds: int = 2000) -> dict[str, float]:
    """What REDIS_WAIT_REPLICAS=1 adds to accepting a request: the API's record write with and without WAIT,
    against a master with one replica on this host (p50 and p99 of `rounds` each, milliseconds)."""
    import statistics
    import uuid

    from imageclf.core.redis_clients import connect
    from imageclf.launch.redis_server import SentinelCluster

    cluster = SentinelCluster(tempfile.mkdtemp(prefix="scaling-sentinel-")).start()
    try:
        client = connect(cluster.url, cluster.name)
        figures = {}
        for label, replicas in (("without_wait", 0), ("with_wait", 1)):
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                with client.pipeline(transaction=False) as pipe:
                    pipe.set(f"imageclf:issued:{uuid.uuid4()}", "x" * 120, ex=60)
                    if replicas:
                        pipe.wait(replicas, 1000)
                    pipe.execute()
                times.append((time.perf_counter() - start) * 1000)
            q = statistics.quantiles(times, n=100)
            figures[f"{label}_p50_ms"], figures[f"{label}_p99_ms"] = q[49], q[98]
        return figures
    finally:
        cluster.stop()


def run(workers: int, model: str, clients: int, requests: int, image: bytes, log_dir: Path) -> dict:
    """One level: N pinned workers; images/s, latency, and Redis' commands and bytes per image."""
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL": model, "MODEL_WEIGHTS": "random",
           "CUDA_VISIBLE_DEVICES": "", "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="scaling-metrics-")}
    processes = [subprocess.Popen(redis_argv(port, tempfile.mkdtemp(prefix="scaling-redis-"), durable=False),
                                  stdout=subprocess.DEVNULL)]
    try:
        if not wait_until(lambda: ping(redis_url), 15):
            raise SystemExit("Redis did not start")
        api_port = free_port()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", str(max(8, clients)), "--bind",
             f"127.0.0.1:{api_port}", "--log-level", "warning", "imageclf.api:create_app()"], cwd=ROOT, env=env,
            stdout=open(log_dir / f"api-{workers}.log", "w"), stderr=subprocess.STDOUT))
        for core in range(workers):
            processes.append(subprocess.Popen(
                ["taskset", "-c", str(core % (os.cpu_count() or 1)), sys.executable, "-m", "celery", "-A", CELERY_APP,
                 "worker", "--pool", "prefork", "--concurrency", "1", "--queues",
                 f"interactive.{model},bulk.{model}", "--hostname", f"{model}-{core}@%h", "--loglevel", "WARNING"],
                cwd=ROOT, env=env, stdout=open(log_dir / f"worker-{workers}-{core}.log", "w"),
                stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{api_port}"

        def all_serving() -> bool:
            try:
                models = httpx.get(url + "/models", timeout=5).json()["models"]
                return len(models[0]["workers"]) == workers
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                return False

        if not wait_until(all_serving, 600):
            raise SystemExit(f"{workers} workers did not come up; logs in {log_dir}")
        client = redis.Redis.from_url(redis_url)
        with tqdm(total=requests, desc=f"{workers} worker(s)", unit="req") as bar:
            e2e(url, image, clients, 2 * clients, bar)  # warm: connections, the batching hold's arrival rate
            before = redis_counters(client)
            level = e2e(url, image, clients, requests, bar)
            after = redis_counters(client)
        images = requests - level["errors"]
        return {"workers": workers, "clients": clients, "images_per_s": level["images_per_s"],
                "p50_ms": level["p50_ms"], "p99_ms": level["p99_ms"], "errors": level["errors"],
                "batch_sizes": level["batch_sizes"],
                **{f"redis_{k}_per_image": (after[k] - before[k]) / max(1, images) for k in before}}
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not shutil.which("taskset"):
        raise SystemExit("taskset (util-linux) is needed to pin each worker to a core")
    image = test_jpeg(args.photo)
    log_dir = Path(tempfile.mkdtemp(prefix="scaling-logs-"))
    waits = wait_cost()
    levels = [run(int(n), args.model, args.clients, args.requests, image, log_dir) for n in args.workers.split(",")]
    base = levels[0]["images_per_s"]
    report = {"command": "python -m benchmarks.scaling " + " ".join(sys.argv[1:]), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
              "image_bytes": len(image), "levels": levels, "wait_cost": waits}
    lines = [f"Model `{args.model}` (random weights), {args.clients} clients, {len(image):,}-byte JPEG; "
             f"{report['machine']}; {report['date']}.", "", f"    {report['command']}", "",
             "| model workers (1 core each) | images/s | × 1 worker | p50 ms | p99 ms | Redis commands per image | "
             "Redis bytes in per image | Redis bytes out per image | Redis CPU ms per image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for level in levels:
        lines.append(f"| {level['workers']} | {level['images_per_s']:.1f} | {level['images_per_s'] / base:.2f} | "
                     f"{level['p50_ms']:.0f} | {level['p99_ms']:.0f} | {level['redis_commands_per_image']:.1f} | "
                     f"{level['redis_bytes_in_per_image']:,.0f} | {level['redis_bytes_out_per_image']:,.0f} | "
                     f"{level['redis_cpu_ms_per_image']:.2f} |")
    lines += ["", "Accepting a request with `REDIS_WAIT_REPLICAS=1` (the record write, then `WAIT` for one replica; "
              "master and replica on this host): "
              f"p50 {waits['without_wait_p50_ms']:.3f} → {waits['with_wait_p50_ms']:.3f} ms, "
              f"p99 {waits['without_wait_p99_ms']:.3f} → {waits['with_wait_p99_ms']:.3f} ms."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark-scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "benchmark-scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
