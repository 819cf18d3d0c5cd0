"""Video jobs against the model's own speed, and what a running video job does to /predict latency.

    python -m benchmarks.jobs                        # ResNet50 (random weights), BULK_BATCH_SIZE 1 and 2
    python -m benchmarks.jobs --model mobilenet_v1_0.75 \\
        --weights ../shared/assets/models/mobilenet_v1_0.75_224_imagenet.keras --bulk-batch-sizes 1

In one run: the worker's own Classifier in this process (raw images/s at a few batch
sizes), then for each BULK_BATCH_SIZE a fresh service (own Redis, imageclf.launch.run) that
gets /predict requests while idle, then a video job sampling every frame of a shared
clip: alone, then with a sequential /predict client beside it (closed loop: its next
request follows each answer, the worst case, as it tends to arrive just after a bulk
batch started), then with /predict requests arriving at random at --rate per second
(open loop, as from many independent clients). Reports video frames/s (job submitted
to SUCCESS) against raw throughput, and /predict p50/p90 and mean stages idle vs during
the job. Writes JSON and Markdown to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

from benchmarks import ROOT
from benchmarks.service import DEFAULT_PHOTO, LocalService, machine, raw_throughput, test_jpeg

DEFAULT_VIDEO = ROOT.parent / "shared" / "assets" / "video" / "dog_border_collie.mp4"


def predict_latencies(url: str, image: bytes, stop: threading.Event, limit: int) -> list[dict[str, float]]:
    """Sequential /predict requests until `stop` is set or `limit` were made: round trip and stage timings (ms)."""
    samples: list[dict[str, float]] = []
    with httpx.Client(timeout=300) as client:
        while not stop.is_set() and len(samples) < limit:
            t0 = time.perf_counter()
            response = client.post(url + "/predict", files={"image": ("bench.jpg", image, "image/jpeg")})
            if response.status_code == 200:
                samples.append({"round_trip_ms": 1000 * (time.perf_counter() - t0), **response.json()["timings"]})
    return samples


def predict_open_loop(url: str, image: bytes, stop: threading.Event, limit: int, rate: float) -> list[dict]:
    """/predict requests arriving at random (Poisson, `rate` per second), independent of the answers."""
    samples: list[dict[str, float]] = []
    rng = random.Random(7)
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64)) as client, \
            ThreadPoolExecutor(64) as pool:

        def one() -> None:
            t0 = time.perf_counter()
            response = client.post(url + "/predict", files={"image": ("bench.jpg", image, "image/jpeg")})
            if response.status_code == 200:
                samples.append({"round_trip_ms": 1000 * (time.perf_counter() - t0), **response.json()["timings"]})

        sent = 0
        while not stop.is_set() and sent < limit:
            pool.submit(one)
            sent += 1
            stop.wait(rng.expovariate(rate))
    return samples


def percentiles(samples: list[dict[str, float]]) -> dict:
    values = [s["round_trip_ms"] for s in samples]
    stages = ("decode_ms", "queue_ms", "batch_wait_ms", "inference_ms", "result_ms")
    return {"n": len(values), "p50_ms": statistics.median(values), "p90_ms": statistics.quantiles(values, n=10)[8],
            "stages_mean_ms": {s: round(statistics.fmean(x[s] for x in samples), 1) for s in stages}}


def video_job(url: str, video: Path, during: threading.Thread | None = None) -> tuple[int, float]:
    """Run one video job sampling every frame (starting `during` once it is accepted): frames, seconds."""
    with httpx.Client(timeout=300) as client:
        t0 = time.perf_counter()
        with open(video, "rb") as f:
            job = client.post(url + "/jobs", files={"video": (video.name, f)},
                              data={"every_n_frames": "1", "top": "1"}).json()
        if during is not None:
            during.start()
        while (body := client.get(url + f"/result/{job['id']}").json())["status"] in ("PENDING", "PROGRESS"):
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
    if body["status"] != "SUCCESS":
        raise SystemExit(f"the video job ended {body['status']}: {body.get('error')}")
    return len(body["result"]["frames"]), elapsed


def beside_video(url: str, video: Path, measure) -> tuple[float, list[dict[str, float]]]:
    """Video frames/s while `measure(stop)` sends /predict requests, and their samples."""
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    thread = threading.Thread(target=lambda: samples.extend(measure(stop)))
    frames, seconds = video_job(url, video, thread)
    stop.set()
    thread.join()
    return frames / seconds, samples


def ratio(during: list[dict[str, float]], idle: list[dict[str, float]]) -> float:
    return statistics.median(x["round_trip_ms"] for x in during) / statistics.median(x["round_trip_ms"] for x in idle)


def run_service(env: dict[str, str], video: Path, image: bytes, idle_requests: int, rate: float, log: Path) -> dict:
    with LocalService(env, log) as svc:
        url = svc.url
        predict_latencies(url, image, threading.Event(), 3)  # warm connections and the path
        idle = predict_latencies(url, image, threading.Event(), idle_requests)
        idle_open = predict_open_loop(url, image, threading.Event(), idle_requests, rate)
        frames, alone_s = video_job(url, video)
        fps_seq, during = beside_video(url, video, lambda stop: predict_latencies(url, image, stop, 10**6))
        fps_open, during_open = beside_video(url, video, lambda stop: predict_open_loop(url, image, stop, 10**6, rate))
        return {
            "video_frames": frames, "video_frames_per_s": frames / alone_s,
            "video_frames_per_s_with_predict": fps_seq, "video_frames_per_s_with_open_loop": fps_open,
            "predict_idle": percentiles(idle), "predict_during_video": percentiles(during),
            "p50_ratio": ratio(during, idle),
            "open_loop_rate_per_s": rate,
            "open_loop_idle": percentiles(idle_open), "open_loop_during_video": percentiles(during_open),
            "open_loop_p50_ratio": ratio(during_open, idle_open),
        }


def markdown(report: dict) -> str:
    raw = report["raw_images_per_s"]
    lines = [
        f"# Video jobs and /predict beside them — {report['model']} ({report['weights']} weights)",
        "",
        f"{report['date']}, {report['machine']}. Video: `{report['video']}`, every frame sampled.",
        "Raw: the worker's Classifier in this process, " +
        ", ".join(f"batch {b}: {v:.1f} img/s" for b, v in raw.items()) + ".",
        "",
        "Video frames/s: job submitted to SUCCESS, alone, then again with a client sending sequential /predict",
        "requests beside it the whole time (which take their share of the model first).",
        "",
        "| BULK_BATCH_SIZE | video frames/s alone | ÷ raw at that batch | ÷ raw best | with /predict beside "
        "| /predict p50 idle | p50 during video | ratio | p90 idle | p90 during |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = max(raw.values())
    for bulk, r in report["runs"].items():
        at = raw.get(str(bulk)) or raw.get(int(bulk)) or best
        lines.append(
            f"| {bulk} | {r['video_frames_per_s']:.1f} | {r['video_frames_per_s'] / at:.2f} | "
            f"{r['video_frames_per_s'] / best:.2f} | {r['video_frames_per_s_with_predict']:.1f} | "
            f"{r['predict_idle']['p50_ms']:.0f} ms | "
            f"{r['predict_during_video']['p50_ms']:.0f} ms | {r['p50_ratio']:.2f}× | "
            f"{r['predict_idle']['p90_ms']:.0f} ms | {r['predict_during_video']['p90_ms']:.0f} ms |")
    lines += ["", "Open loop: /predict requests arriving at random (Poisson) at a fixed rate, as from many "
              "independent clients, idle and during the video job:", "",
              "| BULK_BATCH_SIZE | rate | video frames/s beside | p50 idle | p50 during video | ratio "
              "| p90 idle | p90 during |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for bulk, r in report["runs"].items():
        lines.append(
            f"| {bulk} | {r['open_loop_rate_per_s']:g}/s | {r['video_frames_per_s_with_open_loop']:.1f} | "
            f"{r['open_loop_idle']['p50_ms']:.0f} ms | {r['open_loop_during_video']['p50_ms']:.0f} ms | "
            f"{r['open_loop_p50_ratio']:.2f}× | {r['open_loop_idle']['p90_ms']:.0f} ms | "
            f"{r['open_loop_during_video']['p90_ms']:.0f} ms |")
    lines += ["", "Mean stages of /predict (ms), sequential client, idle → during the video job:", ""]
    for bulk, r in report["runs"].items():
        idle, during = r["predict_idle"]["stages_mean_ms"], r["predict_during_video"]["stages_mean_ms"]
        lines.append(f"- BULK_BATCH_SIZE {bulk}: " + ", ".join(f"{s} {idle[s]} → {during[s]}" for s in idle))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--class-index", default=os.environ.get("CLASS_INDEX", ""))
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--bulk-batch-sizes", default="1,2")
    parser.add_argument("--idle-requests", type=int, default=30)
    parser.add_argument("--rate", type=float, default=2.0, help="open-loop /predict arrivals per second")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    image = test_jpeg(DEFAULT_PHOTO)
    bulks = [int(b) for b in args.bulk_batch_sizes.split(",")]
    raw = raw_throughput(args.model, args.weights, args.class_index, "tensorflow", image,
                         sorted({1, *bulks}), seconds=5.0)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "model": args.model, "weights": args.weights, "video": args.video.name,
        "raw_images_per_s": {str(b): r["images_per_s"] for b, r in raw.items()}, "runs": {},
    }
    for bulk in bulks:
        env = {"MODEL": args.model, "MODEL_WEIGHTS": args.weights, "CLASS_INDEX": args.class_index,
               "BULK_BATCH_SIZE": str(bulk), "API_WORKERS": "1"}
        log = args.out / f"benchmark-jobs-bulk{bulk}.log"
        report["runs"][str(bulk)] = run_service(env, args.video, image, args.idle_requests, args.rate, log)
        log.unlink(missing_ok=True)
        print(json.dumps({bulk: report["runs"][str(bulk)]}, indent=1))
    stem = args.out / f"benchmark-jobs-{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
