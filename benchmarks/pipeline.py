"""What the service itself costs per image: a near-free model served with `make run`'s defaults.

    python -m benchmarks.pipeline                      # 32 and 64 clients, 20 s each
    python -m benchmarks.pipeline --clients 32,64 --seconds 20 --out benchmarks/results/benchmark-pipeline

The model (224×224×3 → global average pool → Dense(10), a repository model saved as
`.keras`) computes almost nothing, so every CPU-millisecond measured is the API, Redis,
Celery and Flower moving one image. Closed-loop clients POST a 1024×768 JPEG to /predict
(wrk when it is installed: a C client costs little of the two cores; else Python threads).
Over each measured window it reads, per image:

- the CPU of every process role (from /proc: user + system), the load client apart;
- Redis' commands (`INFO commandstats`), bytes in and out and CPU (`INFO cpu`);
- and, beside it, the in-process decode floor of the same JPEG (`imageclf.models.images.decode_to_pixels`).

The report projects what one Redis and one 16-core host carry, and how many API cores one
A100 (TensorFlow, 3,900 img/s) and one H200 (TensorRT INT8, 95,000 img/s) need.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import redis

from benchmarks import ROOT
from benchmarks.service import DEFAULT_PHOTO, LocalService, machine

MODEL_NAME = "nearfree"
#: Published rates a GPU takes for ResNet50 (see docs/benchmarks/per-image.md for the sources).
GPU_RATES = {"A100, TensorFlow AMP + XLA": 3900.0, "H200, TensorRT INT8": 95000.0}
HOST_CORES = 16


def near_free_model(repository: Path) -> None:
    """<repository>/nearfree/1/model.keras: 224×224×3 → global average pool → Dense(10)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    version = repository / MODEL_NAME / "1"
    version.mkdir(parents=True, exist_ok=True)
    model.save(version / "model.keras")
    (repository / MODEL_NAME / "labels.txt").write_text("\n".join(f"class_{i}" for i in range(10)) + "\n")


def role_of(process: psutil.Process, parents: dict[int, str]) -> str:
    """What a process of the service is, by its command line (and its parent's role for pool children)."""
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    parent = parents.get(process.ppid(), "")
    if "celery" in line and "worker" in line:
        if parent.startswith("model worker"):
            return "model worker child"
        if parent.startswith("decoder"):
            return "decoder"
        return "decoder" if "--queues jobs" in line else "model worker main"
    for key, role in (("gunicorn", "API (gunicorn)"), ("imageclf.api.grpc_server", "gRPC server"), ("flower", "Flower"),
                      ("redis-server", "Redis"), ("postgres", "PostgreSQL"), ("imageclf", "supervisors")):
        if key in line:
            return role
    return "other"


def service_processes(roots: list[int]) -> dict[int, tuple[psutil.Process, str]]:
    """Every process under `roots`, with its role (parents first, so children know theirs)."""
    found: dict[int, tuple[psutil.Process, str]] = {}
    roles: dict[int, str] = {}
    queue = [psutil.Process(pid) for pid in roots]
    while queue:
        process = queue.pop(0)
        roles[process.pid] = role_of(process, roles)
        found[process.pid] = (process, roles[process.pid])
        try:
            queue += process.children()
        except psutil.Error:
            pass
    return found


def cpu_by_role(processes: dict[int, tuple[psutil.Process, str]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for process, role in processes.values():
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def redis_counters(client: redis.Redis) -> dict:
    stats, cpu = client.info("stats"), client.info("cpu")
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in client.info("commandstats").items()}
    return {"calls": calls, "bytes_in": stats["total_net_input_bytes"], "bytes_out": stats["total_net_output_bytes"],
            "cpu_s": cpu["used_cpu_sys"] + cpu["used_cpu_user"]}


def decode_floor_ms(image: bytes, rounds: int = 300) -> float:
    """Median CPU-ms of one in-process decode + resize of `image` to 224×224 (what the API does per upload)."""
    from imageclf.models.images import decode_to_pixels

    times = []
    for _ in range(rounds):
        start = time.process_time()
        decode_to_pixels(image, (224, 224), 64_000_000, "squash")
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def multipart_body(image: bytes, boundary: str = "imageclfbenchmarkboundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"bench.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


_WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
"""


class LoadClient:
    """Closed-loop clients POSTing the same upload to /predict: wrk when installed, else Python threads."""

    def __init__(self, url: str, image: bytes, workdir: Path) -> None:
        self.url, self.image = url, image
        self.wrk = shutil.which("wrk")
        self.body, self.content_type = multipart_body(image)
        (workdir / "body.bin").write_bytes(self.body)
        (workdir / "post.lua").write_text(_WRK_SCRIPT)
        self.workdir = workdir
        self.process: psutil.Process | None = None

    def run(self, clients: int, seconds: float, on_start) -> dict:
        """Drive the service for `seconds`; `on_start()` is called once the clients are connected."""
        if self.wrk:
            return self._wrk(clients, seconds, on_start)
        return self._threads(clients, seconds, on_start)

    def _wrk(self, clients: int, seconds: float, on_start) -> dict:
        env = {**os.environ, "BENCH_BODY": str(self.workdir / "body.bin"), "BENCH_CONTENT_TYPE": self.content_type}
        threads = min(2, clients)
        proc = subprocess.Popen([self.wrk, "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s",
                                 "--timeout", "30s", "--latency", "-s", str(self.workdir / "post.lua"),
                                 self.url + "/predict"], env=env, stdout=subprocess.PIPE, text=True)
        self.process = psutil.Process(proc.pid)
        on_start()
        out, _ = proc.communicate()
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        latency = {q: _ms(m.group(1)) for q in ("50", "90", "99")
                   if (m := re.search(rf"^\s+{q}%\s+(\S+)", out, re.M))}
        return {"client": "wrk", "requests": requests,
                "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0),
                "p50_ms": latency.get("50"), "p90_ms": latency.get("90"), "p99_ms": latency.get("99")}

    def _threads(self, clients: int, seconds: float, on_start) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        self.process = psutil.Process()
        latencies, errors = [], 0
        stop_at = time.monotonic() + seconds
        headers = {"Content-Type": self.content_type}

        def loop(client: httpx.Client) -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                response = client.post(self.url + "/predict", content=self.body, headers=headers)
                latencies.append(1000 * (time.perf_counter() - t0))
                errors += response.status_code != 200

        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
            on_start()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda _: loop(client), range(clients)))
        q = statistics.quantiles(latencies, n=100)
        return {"client": "python threads", "requests": len(latencies), "errors": errors,
                "p50_ms": q[49], "p90_ms": q[89], "p99_ms": q[98]}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(svc: LocalService, load: LoadClient, clients: int, seconds: float, shards: list[str],
            shard_pids: list[int]) -> dict:
    """One level: img/s, CPU-ms per image by role, Redis commands/bytes/CPU per image (broker and pixel shards)."""
    client = redis.Redis.from_url(svc.redis_url)
    shard_clients = [redis.Redis.from_url(url) for url in shards]
    load.run(clients, min(3.0, seconds), lambda: None)  # warm up: connections, thread pools, batch sizes
    roots = [svc.proc.pid, svc.redis.pid, *shard_pids]  # pixel shards count as Redis
    marks: dict = {}

    def start() -> None:
        time.sleep(1.0)  # let the clients connect
        marks["processes"] = service_processes(roots)
        marks["cpu"], marks["client_cpu"] = cpu_by_role(marks["processes"]), _cpu(load.process)
        marks["redis"], marks["t"], marks["answered"] = redis_counters(client), time.monotonic(), _answered(svc.url)
        marks["shards"] = [redis_counters(c) for c in shard_clients]

    children_before = _children_cpu()
    result = load.run(clients, seconds + 1.0, start)
    elapsed = time.monotonic() - marks["t"]
    cpu_after = cpu_by_role(marks["processes"])
    redis_after, (answered, batches) = redis_counters(client), _answered(svc.url)
    answered, batches = answered - marks["answered"][0], batches - marks["answered"][1]
    images = max(1.0, answered)
    per_image = {role: round(1000 * (cpu_after.get(role, 0.0) - before) / images, 3)
                 for role, before in marks["cpu"].items()}
    shards_after = [redis_counters(c) for c in shard_clients]
    if load.wrk:  # wrk has exited: its CPU over the whole run, per request it made
        client_ms = 1000 * (_children_cpu() - children_before) / max(1, result["requests"])
    else:
        client_ms = 1000 * (_cpu(load.process) - marks["client_cpu"]) / images
    service_roles = {k: v for k, v in per_image.items() if k not in ("supervisors", "gone", "other")}
    return {
        "clients": clients, "seconds": round(elapsed, 2), **result,
        "images": answered, "images_per_s": round(answered / elapsed, 1),
        "mean_batch_size": round(answered / max(1.0, batches), 2),
        "cpu_ms_per_image": per_image,
        "service_cpu_ms_per_image": round(sum(service_roles.values()), 3),
        "load_client_cpu_ms_per_image": round(client_ms, 3),
        "redis": _per_image(marks["redis"], redis_after, images),
        "pixel_shards": [_per_image(before, after, images) for before, after in zip(marks["shards"], shards_after)],
    }


def _per_image(before: dict, after: dict, images: float) -> dict:
    """One Redis server's commands, bytes and CPU per image between two readings."""
    calls = {name: (n - before["calls"].get(name, 0)) / images
             for name, n in after["calls"].items() if n > before["calls"].get(name, 0)}
    return {
        "commands_per_image": round(sum(calls.values()), 2),
        "commands": {k: round(v, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
        "bytes_in_per_image": round((after["bytes_in"] - before["bytes_in"]) / images),
        "bytes_out_per_image": round((after["bytes_out"] - before["bytes_out"]) / images),
        "cpu_ms_per_image": round(1000 * (after["cpu_s"] - before["cpu_s"]) / images, 3),
    }


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def _children_cpu() -> float:
    """CPU seconds of this process' finished children (wrk, once it has exited)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _answered(url: str) -> tuple[float, float]:
    """Images the model workers have answered and the model calls they took (their counters, via /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    images = batches = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "imageclf_images_classified_total":
                images += sample.value
            elif sample.name == "imageclf_batch_size_count":
                batches += sample.value
    return images, batches


def worker_intake(svc: LocalService, images: int, pixels: bytes) -> dict:
    """What one model worker takes in when its queue never runs dry: its processes are paused, `images`
    requests queued straight into Redis (no API), then it is resumed and timed until it has answered them
    all; its img/s and CPU-ms per image by role.

    On this host the API caps what reaches the worker; a GPU host's worker sees its queue full. This is
    that worker's own ceiling: its Celery main process is single-threaded.
    """
    import signal

    from celery import Celery

    from imageclf import settings
    from imageclf.core.payloads import enqueue_classify

    app = Celery("intake")
    app.config_from_object("imageclf.core.celeryconfig")
    app.conf.update(broker_url=svc.redis_url, result_backend=None)
    client = redis.Redis.from_url(svc.redis_url)
    processes = service_processes([svc.proc.pid, svc.redis.pid])
    worker = [p for p, role in processes.values() if role.startswith("model worker")]
    queue = settings.interactive_queue(MODEL_NAME)
    start_answered = _answered(svc.url)[0]
    for process in worker:
        process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(images):
            enqueue_classify(app, client, str(uuid.uuid4()), pixels, (224, 224), 5, 600, queue=queue)
        start_cpu, started = cpu_by_role(processes), time.monotonic()
    finally:
        for process in worker:
            process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 300
    while (answered := _answered(svc.url)[0] - start_answered) < images and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    after = cpu_by_role(processes)
    roles = ("model worker main", "model worker child", "Redis", "Flower")
    return {"images": answered, "seconds": round(elapsed, 2), "images_per_s": round(answered / elapsed, 1),
            "cpu_ms_per_image": {r: round(1000 * (after.get(r, 0.0) - start_cpu.get(r, 0.0)) / max(1, answered), 3)
                                 for r in roles}}


def projection(levels: list[dict], decode_ms: float) -> dict:
    """What the busiest measured level implies for one Redis, one 16-core host and one GPU's API cores."""
    level = max(levels, key=lambda lv: lv["images_per_s"])
    cpu = level["cpu_ms_per_image"]
    redis_ms = level["redis"]["cpu_ms_per_image"]
    service_ms = level["service_cpu_ms_per_image"]
    api_ms = cpu.get("API (gunicorn)", 0.0)
    main_ms = cpu.get("model worker main", 0.0)
    non_decode = service_ms - decode_ms
    return {
        "from_clients": level["clients"],
        "service_cpu_ms_per_image": service_ms,
        "non_decode_cpu_ms_per_image": round(non_decode, 3),
        "per_redis_img_s": round(1000 / redis_ms) if redis_ms else None,
        "per_16_core_host_img_s": round(HOST_CORES * 1000 / service_ms) if service_ms else None,
        "per_worker_main_process_img_s": round(1000 / main_ms) if main_ms else None,
        "api_cores": {gpu: round(rate * api_ms / 1000, 1) for gpu, rate in GPU_RATES.items()},
        "service_cores": {gpu: round(rate * service_ms / 1000, 1) for gpu, rate in GPU_RATES.items()},
        "redis_servers": {gpu: round(rate * redis_ms / 1000, 2) for gpu, rate in GPU_RATES.items()},
        "api_cpu_ms_per_image": api_ms,
        "worker_main_cpu_ms_per_image": main_ms,
        "redis_cpu_ms_per_image": redis_ms,
    }


def markdown(report: dict) -> str:
    roles = sorted({r for lv in report["levels"] for r in lv["cpu_ms_per_image"]} - {"gone", "other"})
    lines = [f"Measured {report['date']} on {report['machine']}; load client: {report['levels'][0]['client']}.",
             f"Near-free model ({MODEL_NAME}: 224×224×3 → average pool → Dense(10)), `make run`'s defaults, "
             f"1024×768 JPEG of {report['image_bytes'] // 1024} KB.", "",
             "| per image | " + " | ".join(f"{lv['clients']} clients" for lv in report["levels"]) + " |",
             "|---|" + "---|" * len(report["levels"]),
             "| throughput (img/s) | " + " | ".join(f"{lv['images_per_s']:.0f}" for lv in report["levels"]) + " |",
             "| mean batch size | " + " | ".join(f"{lv['mean_batch_size']:.1f}" for lv in report["levels"]) + " |",
             "| p50 / p99 latency (ms) | " + " | ".join(f"{lv['p50_ms']:.1f} / {lv['p99_ms']:.1f}"
                                                   for lv in report["levels"]) + " |"]
    for role in roles:
        lines.append(f"| CPU-ms: {role} | " + " | ".join(f"{lv['cpu_ms_per_image'].get(role, 0.0):.2f}"
                                                       for lv in report["levels"]) + " |")
    lines += [
        "| **CPU-ms: service, all roles** | " + " | ".join(f"**{lv['service_cpu_ms_per_image']:.2f}**"
                                                        for lv in report["levels"]) + " |",
        "| … of which the decode floor (in process) | " + " | ".join(f"{report['decode_floor_ms']:.2f}"
                                                                   for _ in report["levels"]) + " |",
        "| **CPU-ms: service but decoding** | " + " | ".join(
            f"**{lv['service_cpu_ms_per_image'] - report['decode_floor_ms']:.2f}**" for lv in report["levels"]) + " |",
        "| CPU-ms: load client (apart) | " + " | ".join(f"{lv['load_client_cpu_ms_per_image']:.2f}"
                                                      for lv in report["levels"]) + " |",
        "| broker Redis: CPU-ms (`INFO cpu`) | " + " | ".join(f"{lv['redis']['cpu_ms_per_image']:.3f}"
                                                             for lv in report["levels"]) + " |",
        "| broker Redis: commands | " + " | ".join(f"{lv['redis']['commands_per_image']:.1f}"
                                         for lv in report["levels"]) + " |",
        "| broker Redis: bytes in / out | " + " | ".join(f"{lv['redis']['bytes_in_per_image'] / 1024:.0f} KB / "
                                                f"{lv['redis']['bytes_out_per_image'] / 1024:.0f} KB"
                                                for lv in report["levels"]) + " |",
        *(f"| pixel shard {i + 1}: commands / CPU-ms / bytes in | " + " | ".join(
            f"{lv['pixel_shards'][i]['commands_per_image']:.1f} / {lv['pixel_shards'][i]['cpu_ms_per_image']:.3f} / "
            f"{lv['pixel_shards'][i]['bytes_in_per_image'] / 1024:.0f} KB" for lv in report["levels"]) + " |"
          for i in range(len(report["levels"][0]["pixel_shards"]))),
        "", "Redis commands per image: " + "; ".join(
            f"{lv['clients']} clients: " + ", ".join(f"{k} {v:g}" for k, v in lv["redis"]["commands"].items())
            for lv in report["levels"]), "",
    ]
    intake = report.get("worker_intake")
    if intake:
        cpu = intake["cpu_ms_per_image"]
        lines += [f"One worker's intake, {intake['images']:.0f} requests queued straight into Redis while it was "
                  f"paused, then drained: "
                  f"**{intake['images_per_s']:.0f} img/s**; CPU-ms per image: "
                  + ", ".join(f"{role} {ms:.2f}" for role, ms in cpu.items()) + ".", ""]
    p = report["projection"]
    lines += [
        f"Projection (from {p['from_clients']} clients):",
        f"- one Redis: 1000 ms ÷ {p['redis_cpu_ms_per_image']:.3f} ms = **{p['per_redis_img_s']:,} img/s**;",
        f"- one {HOST_CORES}-core host running the whole service: {HOST_CORES} × 1000 ÷ "
        f"{p['service_cpu_ms_per_image']:.2f} ms = **{p['per_16_core_host_img_s']:,} img/s**;",
        f"- one model worker's Celery main process (single-threaded, one per GPU): 1000 ÷ "
        f"{p['worker_main_cpu_ms_per_image']:.3f} ms = **{p['per_worker_main_process_img_s']:,} img/s**;",
    ]
    for gpu, rate in GPU_RATES.items():
        lines.append(f"- {gpu} ({rate:,.0f} img/s): API cores {rate:,.0f} × {p['api_cpu_ms_per_image']:.2f} ms = "
                     f"**{p['api_cores'][gpu]}**; all service cores {rate:,.0f} × "
                     f"{p['service_cpu_ms_per_image']:.2f} ms = {p['service_cores'][gpu]}; "
                     f"Redis servers {p['redis_servers'][gpu]}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="32,64")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--image", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "benchmark-pipeline",
                        help="writes <out>.json and <out>.md")
    parser.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the service")
    parser.add_argument("--intake", type=int, default=2000,
                        help="requests queued straight into Redis to measure one worker's intake (0: skip)")
    parser.add_argument("--review", type=json.loads, help="the model's review rules (config.json 'review'), as JSON")
    parser.add_argument("--pixel-shards", type=int, default=0,
                        help="also start this many Redis servers for the pixels (PIXELS_REDIS_URLS)")
    args = parser.parse_args()

    image = _jpeg_1024x768(args.image)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    near_free_model(work / "repository")
    if args.review:
        (work / "repository" / MODEL_NAME / "config.json").write_text(json.dumps({"review": args.review}))
    env = {"MODEL": MODEL_NAME, "MODEL_REPOSITORY": str(work / "repository"), "CUDA_VISIBLE_DEVICES": "",
           "UPLOAD_DIR": str(work / "uploads"), "MODEL_CACHE_DIR": str(work / "cache"),
           **dict(item.split("=", 1) for item in args.env)}
    decode_ms = decode_floor_ms(image)
    levels = []
    shard_procs, shards = start_redis_servers(args.pixel_shards, work)
    if shards:
        env["PIXELS_REDIS_URLS"] = ",".join(shards)
    try:
        with LocalService(env, work / "service.log") as svc:
            load = LoadClient(svc.url, image, work)
            for clients in (int(c) for c in args.clients.split(",")):
                level = measure(svc, load, clients, args.seconds, shards, [p.pid for p in shard_procs])
                print(json.dumps(level), file=sys.stderr)
                levels.append(level)
            intake = worker_intake(svc, args.intake, bytes(224 * 224 * 3)) if args.intake else None
            print(json.dumps({"worker_intake": intake}), file=sys.stderr)
    finally:
        for proc in shard_procs:
            proc.terminate()
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "image_bytes": len(image),
              "review": args.review,
              "decode_floor_ms": round(decode_ms, 3), "env": env, "levels": levels,
              "projection": projection(levels, decode_ms), "worker_intake": intake}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def start_redis_servers(n: int, work: Path) -> tuple[list[subprocess.Popen], list[str]]:
    """`n` throwaway Redis servers (the pixel shards) and their URLs."""
    from imageclf.launch.redis_server import free_port, ping, redis_argv
    from imageclf.launch.supervise import wait_until

    procs, urls = [], []
    for i in range(n):
        port = free_port()
        procs.append(subprocess.Popen(redis_argv(port, str(work / f"shard-{i}"), durable=False),
                                      stdout=subprocess.DEVNULL))
        urls.append(f"redis://127.0.0.1:{port}/0")
        if not wait_until(lambda url=urls[-1]: ping(url), 15):
            raise SystemExit("a pixel shard did not start")
    return procs, urls


def _jpeg_1024x768(photo: Path) -> bytes:
    """The photo as a 1024×768 JPEG at quality 95 (about 250 KB), the upload the issue measured."""
    import io

    from PIL import Image

    with Image.open(photo) as img:
        out = io.BytesIO()
        img.convert("RGB").resize((1024, 768)).save(out, "JPEG", quality=95)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
