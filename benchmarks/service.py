"""How close the service comes to the model's own speed: raw in-process vs end to end, in one run.

    python -m benchmarks.service                                   # ResNet50 random weights, both backends
    python -m benchmarks.service --model mobilenet_v1_0.75 \\
        --weights ../shared/assets/models/mobilenet_v1_0.75_224_imagenet.keras --backends tensorflow
    python -m benchmarks.service --url http://127.0.0.1:5000 --backends tensorflow   # a running service

For each backend it measures the worker's own Classifier in this process (batch 1, 8,
32: the ceiling), starts the service (its own Redis, imageclf.launch.run) with its defaults (the
worker picks its batch size; --batch-size sets BATCH_SIZE, "auto" to the best raw batch),
sends real multipart uploads of a 1024x768 JPEG at each concurrency, and reads the
per-stage timings every answer carries.
Writes JSON, Markdown and PNG plots to --out. Figures from different runs on a shared
machine are not comparable: compare the ratios inside one run.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks import ROOT
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from imageclf.models.images import decode_to_pixels
from imageclf.models.registry import get_spec

DEFAULT_PHOTO = ROOT.parent / "shared" / "assets" / "images" / "cat_720p.jpg"
STAGES = ("decode_ms", "queue_ms", "batch_wait_ms", "inference_ms", "result_ms")


def test_jpeg(photo: Path) -> bytes:
    """A real photo re-encoded at 1024x768 (about 100 KB), the upload every request sends."""
    buf = io.BytesIO()
    Image.open(photo).convert("RGB").resize((1024, 768), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def raw_throughput(model: str, weights: str, class_index: str, backend: str, image: bytes,
                   batches: list[int], seconds: float) -> dict[int, dict]:
    """Images/s and ms per call of the worker's own Classifier (same backend, no padding) per batch."""
    from imageclf.models.keras_model import load_classifier

    spec = get_spec(model)
    with tempfile.TemporaryDirectory() as cache:
        classifier = load_classifier(spec, weights, class_index, max(batches), backend, cache)
    classifier.warm_up()
    one = np.frombuffer(decode_to_pixels(image, spec.input_size, 10**9), np.uint8).reshape(spec.input_shape)
    results = {}
    for batch in tqdm(batches, desc=f"raw {backend}", unit="batch size"):
        x = np.repeat(one[None], batch, axis=0)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 3:
            classifier.predict(x)
            calls += 1
        elapsed = time.perf_counter() - start
        results[batch] = {"images_per_s": batch * calls / elapsed, "ms_per_call": 1000 * elapsed / calls}
    del classifier
    gc.collect()
    return results


def service_counters(url: str) -> dict[str, float]:
    """From the service's /metrics: model busy seconds (all models) and the API's CPU seconds and count for
    /predict (all API processes)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    totals = {"busy_s": 0.0, "cpu_s": 0.0, "cpu_n": 0.0}
    names = {"imageclf_model_busy_seconds_total": "busy_s", "imageclf_http_request_cpu_seconds_sum": "cpu_s",
             "imageclf_http_request_cpu_seconds_count": "cpu_n"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key and (key == "busy_s" or sample.labels.get("route") == "/predict"):
                totals[key] += sample.value
    return totals


#: Process roles by a piece of their command line, first match wins.
_ROLES = (("gunicorn", "API (gunicorn)"), ("imageclf.api.grpc_server", "gRPC server"), ("flower", "Flower"),
          ("--queues jobs", "decoders"), ("redis-server", "Redis"), ("postgres", "PostgreSQL"),
          ("celery", "model worker's consumer"),
          ("benchmarks.service", "load client"), ("imageclf", "supervisors"))


class CpuMeter:
    """CPU seconds of the model process and of everything else on the host that serves or loads it.

    On a host where the model runs on the CPU, the API, Redis, the Celery consumer and the load
    client take cores from the model: raw × (cores left ÷ cores) is the ceiling end to end.
    """

    def __init__(self, model_pid: int, other_roots: list[int]) -> None:
        import psutil

        self.model = psutil.Process(model_pid)
        self.others = [psutil.Process(pid) for pid in other_roots]

    def _others(self) -> list:
        found = []
        for root in self.others:
            found += [root, *root.children(recursive=True)]
        return [p for p in found if p.pid != self.model.pid]

    @staticmethod
    def _seconds(processes: list) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except Exception:  # exited meanwhile
                pass
        return total

    def read(self) -> tuple[float, float]:
        return self._seconds([self.model]), self._seconds(self._others())

    def by_role(self) -> dict[str, float]:
        """CPU seconds of everything else, by what each process is (its command line)."""
        roles: dict[str, float] = {}
        for process in self._others():
            try:
                line = " ".join(process.cmdline())
            except Exception:  # exited meanwhile
                continue
            role = next((name for key, name in _ROLES if key in line), "other")
            roles[role] = roles.get(role, 0.0) + self._seconds([process])
        return roles


def e2e(url: str, image: bytes, concurrency: int, requests: int, bar: tqdm, meter: CpuMeter | None = None) -> dict:
    """Throughput, latency percentiles, batch sizes and mean stage timings at one concurrency."""
    latencies: list[float] = []
    sizes: Counter[int] = Counter()
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    errors = 0
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(record: bool) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                response = client.post(url + "/predict", files={"image": ("bench.jpg", image, "image/jpeg")})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if not record:
                return
            latencies.append(time.perf_counter() - t0)
            bar.update()
            if not ok:
                errors += 1
                return
            body = response.json()
            sizes[body["batch_size"]] += 1
            for stage in STAGES:
                stages[stage].append(body["timings"][stage])

        for _ in range(2):  # settle connections
            one(False)
        before = service_counters(url)
        cpu_before = meter.read() if meter else (0.0, 0.0)
        roles_before = meter.by_role() if meter else {}
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: one(True), range(requests)))
        elapsed = time.perf_counter() - start
        cpu_after = meter.read() if meter else (0.0, 0.0)
        roles_after = meter.by_role() if meter else {}
        after = service_counters(url)
    q = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency, "requests": requests, "errors": errors,
        "images_per_s": (requests - errors) / elapsed,
        "p50_ms": 1000 * q[49], "p90_ms": 1000 * q[89], "p99_ms": 1000 * q[98],
        "batch_sizes": dict(sorted(sizes.items())),
        "mean_batch_size": sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())),
        "stages_mean_ms": {s: statistics.fmean(v) if v else None for s, v in stages.items()},
        # One model worker: the share of the run it spent on batches; API CPU per /predict, all threads' own time.
        "model_busy_ratio": (after["busy_s"] - before["busy_s"]) / elapsed,
        "api_cpu_ms_per_predict": 1000 * (after["cpu_s"] - before["cpu_s"])
        / max(1.0, after["cpu_n"] - before["cpu_n"]),
        # Cores in use on average: the model process, and the rest (API, Redis, Celery consumer, this client).
        "model_cores": (cpu_after[0] - cpu_before[0]) / elapsed if meter else None,
        "other_cores": (cpu_after[1] - cpu_before[1]) / elapsed if meter else None,
        "other_cores_by_role": {role: round((roles_after[role] - roles_before.get(role, 0.0)) / elapsed, 3)
                                for role in roles_after},
    }


def redis_bytes_per_image(redis_url: str, pixels: bytes, size: tuple[int, int], n: int = 20) -> float:
    """Redis memory one queued image takes: message + pixels (queued where nobody consumes, then dropped)."""
    import uuid

    import redis
    from celery import Celery

    from imageclf.core.payloads import PIXELS_PREFIX, enqueue_classify

    app = Celery("benchmark")
    app.config_from_object("imageclf.core.celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=None)
    queue = "benchmark-bytes"
    client = redis.Redis.from_url(redis_url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for task_id in ids:
        enqueue_classify(app, client, task_id, pixels, size, 5, 600, queue=queue)
    keys = [PIXELS_PREFIX + task_id for task_id in ids]
    used = (client.memory_usage(queue, samples=0) or 0) + sum(client.memory_usage(k) or 0 for k in keys)
    client.delete(queue, *keys)
    return used / n


def open_inference(svc: LocalService, model: str, image: bytes, levels: str) -> dict:
    """perf_analyzer's figures over v2 HTTP and gRPC at each of `levels` (comma-separated concurrencies)."""
    from benchmarks import perf_analyzer

    if not levels:
        return {"skipped": "--perf-analyzer is empty"}
    try:
        perf_analyzer.install()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"perf_analyzer skipped: {exc}", file=sys.stderr)
        return {"skipped": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        data = perf_analyzer.input_data(image, Path(tmp) / "data.json")
        runs = [perf_analyzer.measure(address, protocol, model, data, int(c))
                for c in levels.split(",")
                for protocol, address in (("http", svc.url.split("://", 1)[1]), ("grpc", svc.service.grpc_url))]
    return {"runs": runs}


class LocalService:
    """Its own Redis plus the service (imageclf.launch.run) for one backend, stopped on exit."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path

    def __enter__(self) -> LocalService:
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.redis = subprocess.Popen(redis_argv(port, tempfile.mkdtemp(prefix="bench-redis-"), durable=False),
                                      stdout=subprocess.DEVNULL)
        if not wait_until(lambda: ping(self.redis_url), 15):
            raise SystemExit("Redis did not start")
        self.service = ServiceProcess({**self.env, "REDIS_URL": self.redis_url}, self.log_path)
        try:
            self.service.start(600)
        except RuntimeError as exc:
            self.redis.terminate()
            raise SystemExit(str(exc)) from None
        self.url, self.proc = self.service.url, self.service.proc
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop(120)
        self.redis.terminate()
        self.redis.wait(10)


def markdown(report: dict) -> str:
    """The report's tables."""
    out = [f"Model `{report['model']}` (weights `{report['weights']}`), upload: {report['image']}.",
           f"Machine: {report['machine']}. Run: {report['date']}.", "", f"    {report['command']}", ""]
    out += ["### Raw in-process throughput (the ceiling)", "",
            "| backend | batch | images/s | ms per call |", "|---|---|---|---|"]
    for name, b in report["backends"].items():
        for batch, r in b["raw"].items():
            out.append(f"| {name} | {batch} | {r['images_per_s']:.1f} | {r['ms_per_call']:.1f} |")
    out += ["", "### End to end (HTTP multipart → API → Redis → batching worker → answer)", "",
            "| backend | BATCH_SIZE | clients | images/s | p50 ms | p90 ms | p99 ms | errors | model busy | "
            "API CPU ms per request | cores: model / rest | batch sizes seen |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in report["backends"].items():
        for lvl in b["e2e"]:
            dist = ", ".join(f"{k}×{v}" for k, v in lvl["batch_sizes"].items())
            out.append(f"| {name} | {b['batch_size']} | {lvl['concurrency']} | {lvl['images_per_s']:.1f} | "
                       f"{lvl['p50_ms']:.0f} | {lvl['p90_ms']:.0f} | {lvl['p99_ms']:.0f} | {lvl['errors']} | "
                       f"{lvl.get('model_busy_ratio', 0):.0%} | {lvl.get('api_cpu_ms_per_predict', 0):.1f} | "
                       f"{_cores(lvl)} | {dist} |")
    out += ["", "### Open Inference Protocol (Triton's perf_analyzer) beside /predict, same image", "",
            "| backend | clients | /predict images/s | v2 HTTP images/s | v2 gRPC images/s | /predict p50 / p99 ms | "
            "v2 HTTP p50 / p99 ms | v2 gRPC p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for name, b in report["backends"].items():
        v2 = b.get("open_inference", {})
        if "runs" not in v2:
            out.append(f"| {name} | - | not run: {v2.get('skipped', 'no figures')} | | | | | |")
            continue
        for clients in sorted({r["concurrency"] for r in v2["runs"]}):
            http, grpc = (next(r for r in v2["runs"] if r["concurrency"] == clients and r["protocol"] == p)
                          for p in ("http", "grpc"))
            predict = next((r for r in b["e2e"] if r["concurrency"] == clients), None)
            cells = (f"{predict['images_per_s']:.1f}", f"{predict['p50_ms']:.0f} / {predict['p99_ms']:.0f}") \
                if predict else ("-", "-")
            out.append(f"| {name} | {clients} | {cells[0]} | {http['images_per_s']:.1f} | {grpc['images_per_s']:.1f} | "
                       f"{cells[1]} | {http['p50_ms']:.0f} / {http['p99_ms']:.0f} | "
                       f"{grpc['p50_ms']:.0f} / {grpc['p99_ms']:.0f} |")
    out += ["", "### Where the time goes (mean ms per request)", "",
            "| backend | clients | decode (API) | queue | batch wait | inference | result | p50 total |",
            "|---|---|---|---|---|---|---|---|"]
    for name, b in report["backends"].items():
        for lvl in b["e2e"]:
            s = lvl["stages_mean_ms"]
            cells = " | ".join(f"{s[k]:.1f}" if s[k] is not None else "-" for k in STAGES)
            out.append(f"| {name} | {lvl['concurrency']} | {cells} | {lvl['p50_ms']:.0f} |")
    out += ["", "### Ratios", "",
            "| backend | raw best (batch) | e2e best (clients) | e2e ÷ raw best | CPU left to the model | "
            "e2e ÷ (raw best × CPU left) | conc-1 p50 − raw batch-1 | Redis bytes per queued image |",
            "|---|---|---|---|---|---|---|---|"]
    for name, b in report["backends"].items():
        r = b["ratios"]
        out.append(f"| {name} | {r['raw_best_images_per_s']:.1f} ({r['raw_best_batch']}) | "
                   f"{r['e2e_best_images_per_s']:.1f} ({r['e2e_best_concurrency']}) | {r['e2e_over_raw_best']:.2f} | "
                   f"{_share(r.get('cpu_share_left_to_model'))} | {_ratio(r.get('e2e_over_raw_best_on_cpu_left'))} | "
                   f"{r['conc1_p50_minus_raw_batch1_ms']:+.1f} ms | {b['redis_bytes_per_image']:,.0f} |")
    return "\n".join(out) + "\n"


def _cores(level: dict) -> str:
    return "-" if level.get("model_cores") is None else f"{level['model_cores']:.2f} / {level['other_cores']:.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("images_per_s", "images/s", "throughput"), ("p99_ms", "p99 latency (ms)", "p99")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for backend, b in report["backends"].items():
            conc = [lvl["concurrency"] for lvl in b["e2e"]]
            line = ax.plot(conc, [lvl[key] for lvl in b["e2e"]], marker="o", label=f"{backend} end to end")[0]
            if key == "images_per_s":
                ax.axhline(b["ratios"]["raw_best_images_per_s"], color=line.get_color(), linestyle="--",
                           label=f"{backend} raw best (batch {b['ratios']['raw_best_batch']})")
        ax.set_xscale("log", base=2)
        ticks = sorted({lvl["concurrency"] for b in report["backends"].values() for lvl in b["e2e"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{report['model']}: {ylabel} vs concurrency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / f"benchmark_{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU" \
        if not os.environ.get("CUDA_VISIBLE_DEVICES") else f"{cpu}, {os.cpu_count()} cores, GPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--class-index", default=os.environ.get("CLASS_INDEX", ""))
    parser.add_argument("--backends", default="tensorflow,onnxruntime")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--concurrency", default="1,4,16,32,64")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least 2 per client)")
    parser.add_argument("--raw-batches", default="1,8,32")
    parser.add_argument("--raw-seconds", type=float, default=6.0)
    parser.add_argument("--batch-size", default="default",
                        help="the service's BATCH_SIZE; default: unset (the worker picks); auto: the best raw batch")
    parser.add_argument("--perf-analyzer", default="1,32", metavar="CLIENTS",
                        help="also run Triton's perf_analyzer over v2 HTTP and gRPC at these concurrencies "
                             "(installed on first use, see benchmarks/perf_analyzer.py); empty: skip")
    parser.add_argument("--url", help="benchmark this running service (one backend) instead of starting one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    image = test_jpeg(args.photo)
    spec = get_spec(args.model)
    pixels = decode_to_pixels(image, spec.input_size, 10**9)
    levels = [int(c) for c in args.concurrency.split(",")]
    report = {
        "command": "python -m benchmarks.service " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "model": args.model, "weights": args.weights,
        "image": f"{args.photo.name} re-encoded 1024x768, {len(image):,} bytes", "backends": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for backend in args.backends.split(","):
        raw = raw_throughput(args.model, args.weights, args.class_index, backend, image,
                             [int(b) for b in args.raw_batches.split(",")], args.raw_seconds)
        best_batch = max(raw, key=lambda b: raw[b]["images_per_s"])
        batch_size: int | str = {"auto": best_batch, "default": "default"}.get(args.batch_size) or int(args.batch_size)
        env = {"MODEL": args.model, "MODEL_WEIGHTS": args.weights, "CLASS_INDEX": args.class_index,
               "BACKEND": backend, "MODEL_CACHE_DIR": tempfile.mkdtemp(),
               **({} if batch_size == "default" else {"BATCH_SIZE": str(batch_size)})}
        total = sum(max(args.requests, 2 * c) for c in levels)
        v2: dict = {"skipped": "a running service (--url)"}
        if args.url:
            url, redis_bytes, runs = args.url, float("nan"), []
            with tqdm(total=total, desc=f"e2e {backend}", unit="req") as bar:
                runs = [e2e(url, image, c, max(args.requests, 2 * c), bar) for c in levels]
        else:
            with LocalService(env, Path(tempfile.gettempdir()) / f"benchmark-{backend}.log") as svc:
                redis_bytes = redis_bytes_per_image(svc.redis_url, pixels, spec.input_shape[:2])
                worker = httpx.get(svc.url + "/models", timeout=10).json()["models"][0]["workers"][0]
                if batch_size == "default":
                    batch_size = f"{worker['batch_size']} (measured: {worker.get('batch_curve')})"
                meter = CpuMeter(worker["pid"], [svc.proc.pid, svc.redis.pid, os.getpid()])
                with tqdm(total=total, desc=f"e2e {backend}", unit="req") as bar:
                    runs = [e2e(svc.url, image, c, max(args.requests, 2 * c), bar, meter) for c in levels]
                v2 = open_inference(svc, args.model, image, args.perf_analyzer)
        best = max(runs, key=lambda r: r["images_per_s"])
        conc1 = next((r for r in runs if r["concurrency"] == 1), runs[0])
        cores = os.cpu_count() or 1
        left = max(0.0, 1 - best["other_cores"] / cores) if best.get("other_cores") is not None else None
        report["backends"][backend] = {
            "batch_size": batch_size, "raw": raw, "e2e": runs, "redis_bytes_per_image": redis_bytes,
            "open_inference": v2,
            "ratios": {
                "raw_best_batch": best_batch, "raw_best_images_per_s": raw[best_batch]["images_per_s"],
                "e2e_best_images_per_s": best["images_per_s"], "e2e_best_concurrency": best["concurrency"],
                "e2e_over_raw_best": best["images_per_s"] / raw[best_batch]["images_per_s"],
                "conc1_p50_minus_raw_batch1_ms": conc1["p50_ms"] - raw[min(raw)]["ms_per_call"],
                # Without a GPU the rest of the service and the client share the model's cores.
                "cpu_share_left_to_model": left,
                "e2e_over_raw_best_on_cpu_left": best["images_per_s"] / (raw[best_batch]["images_per_s"] * left)
                if left else None,
            },
        }
    stem = f"benchmark-{args.model}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"{stem}.md").write_text(table)
    written = plots(report, args.out)
    print(table)
    print("wrote", args.out / f"{stem}.json", args.out / f"{stem}.md", *written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
