"""Raw in-process model throughput next to end-to-end service throughput, in one run.

    python -m scripts.benchmark                                  # ResNet50, random weights
    python -m scripts.benchmark --model mobilenet_v1_0.75 \\
        --weights ../shared/assets/models/mobilenet_v1_0.75_224_imagenet.keras

It starts the service itself (scripts.run, embedded Redis) unless --url points at a
running one, measures the same model through the same Classifier the worker uses
(batch 1, 8, 32), then sends real multipart uploads of a real JPEG at each
concurrency. Figures from different runs on a shared machine are not comparable;
compare the ratios printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from models.images import decode_to_pixels
from models.registry import get_spec
from scripts.redis_server import free_port

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent.parent / "shared" / "assets" / "images" / "cat_720p.jpg"


def raw_throughput(model: str, weights: str, class_index: str, image: bytes, batches: list[int],
                   seconds: float) -> dict[int, dict]:
    """Images/s and ms per call of the worker's own Classifier at each batch size."""
    from models.keras_model import load_classifier

    spec = get_spec(model)
    classifier = load_classifier(spec, weights, class_index, max(batches))
    classifier.warm_up()
    one = np.frombuffer(decode_to_pixels(image, spec.input_size, 10**9), np.uint8).reshape(spec.input_shape)
    results = {}
    for batch in batches:
        x = np.repeat(one[None], batch, axis=0)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 3:
            classifier.predict(x)
            calls += 1
        elapsed = time.perf_counter() - start
        results[batch] = {"images_per_s": batch * calls / elapsed, "ms_per_call": 1000 * elapsed / calls}
    return results


def e2e(url: str, image: bytes, concurrency: int, requests: int) -> dict:
    """Throughput, latency percentiles and batch sizes of `requests` uploads from `concurrency` clients."""
    latencies, sizes, errors = [], [], 0
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(_: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            response = client.post(url + "/predict", files={"image": ("bench.jpg", image, "image/jpeg")})
            latencies.append(time.perf_counter() - t0)
            if response.status_code == 200:
                sizes.append(response.json()["batch_size"])
            else:
                errors += 1

        for _ in range(min(concurrency, 4)):  # settle connections and the worker
            one(0)
        latencies.clear(), sizes.clear()
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency, "requests": requests, "errors": errors,
        "images_per_s": len(sizes) / elapsed,
        "p50_ms": 1000 * q[49], "p90_ms": 1000 * q[89], "p99_ms": 1000 * q[98],
        "mean_batch_size": statistics.mean(sizes) if sizes else 0.0,
    }


def start_service(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port, flower = free_port(), free_port()
    env = {**os.environ, **env, "PORT": str(port), "FLOWER_PORT": str(flower), "REDIS_URL": "",
           "REDIS_DATA_DIR": tempfile.mkdtemp(prefix="bench-redis-")}
    log = open(Path(tempfile.gettempdir()) / "benchmark-service.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.run"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit(f"the service did not become ready; see {log.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--class-index", default=os.environ.get("CLASS_INDEX", ""))
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--concurrency", default="1,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=192, help="requests per concurrency level")
    parser.add_argument("--raw-seconds", type=float, default=8.0)
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    args = parser.parse_args()
    image = args.image.read_bytes()

    proc = None
    url = args.url
    if not url:
        proc, url = start_service({"MODEL": args.model, "MODEL_WEIGHTS": args.weights,
                                   "CLASS_INDEX": args.class_index})
    try:
        raw = raw_throughput(args.model, args.weights, args.class_index, image, [1, 8, 32], args.raw_seconds)
        levels = [e2e(url, image, int(c), args.requests) for c in args.concurrency.split(",")]
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(120)
    best = max(r["images_per_s"] for r in raw.values())
    report = {
        "model": args.model, "weights": args.weights, "image": str(args.image),
        "raw": raw, "e2e": levels,
        "e2e_over_raw_best": {lvl["concurrency"]: lvl["images_per_s"] / best for lvl in levels},
    }
    print(json.dumps(report, indent=2))
    for batch, r in raw.items():
        print(f"raw batch {batch:>2}: {r['images_per_s']:7.1f} img/s  {r['ms_per_call']:8.1f} ms/call")
    for lvl in levels:
        print(f"e2e conc {lvl['concurrency']:>2}: {lvl['images_per_s']:7.1f} img/s  p50 {lvl['p50_ms']:7.1f} ms  "
              f"p99 {lvl['p99_ms']:7.1f} ms  mean batch {lvl['mean_batch_size']:.1f}  errors {lvl['errors']}  "
              f"= {lvl['images_per_s'] / best:.2f} x raw best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
