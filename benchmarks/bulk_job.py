"""One big job on the near-free model: the bulk path's own cost per image, by process, and how busy the cores are.

    python -m benchmarks.bulk_job --images 20000 --out benchmarks/results/benchmark-bulk-job

Serves a near-free model (224×224×3 → global average pool → Dense(10): benchmarks.scratch_service) with
BULK_BATCH_SIZE=32 (the default on a GPU host) and one decoder process per core, then runs one job of
`--images` distinct 1024×768 JPEGs (the shared photos, each stamped with its own patch; made once and
kept in var/bench-jpegs-N) three ways: uploaded as a zip, named as a `source` folder, and the folder again
with a second set of decoders started as another host would start them (`imageclf worker
--decoders-only`). For each it reads, over the job's wall time: the CPU of every service process by role
(/proc), Redis' commands (INFO commandstats) and the machine's busy share (/proc/stat). The decoding floor
is decode_to_pixels of the same JPEGs in this process; "everything but decoding" is all service CPU less
that floor per image. With `--video-minutes M`, it also times an M-minute video sampled at 2 fps with one
decoder process and with one per core (separate services), the ratio being the fan-out's gain on video.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis
from PIL import Image

from benchmarks import ROOT
from benchmarks.reports import publish
from benchmarks.scratch_service import Scratch, scratch_service

PHOTOS = ROOT.parent / "shared" / "assets" / "images"
SIZE = 224
#: (what a process's command line contains, its role), first match wins.
ROLES = (("gunicorn", "API"), ("imageclf.api.grpc_server", "gRPC"), ("flower", "Flower"),
         ("--decoders-only", "supervisors"), ("--queues jobs", "decoders"), ("imageclf", "supervisors"))


def _make(args: tuple[int, Path, list[Path]]) -> None:
    index, folder, bases = args
    rng = np.random.default_rng(index)
    with Image.open(bases[index % len(bases)]) as base:
        image = base.convert("RGB").resize((1024, 768))
    x, y = rng.integers(0, 1024 - 64), rng.integers(0, 768 - 64)
    image.paste(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), (int(x), int(y)))
    image.save(folder / f"{index:06d}.jpg", quality=90)


def jpegs(count: int) -> Path:
    """`count` distinct 1024×768 JPEGs, made once."""
    folder = ROOT / "var" / f"bench-jpegs-{count}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    bases = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make, [(i, folder, bases) for i in range(count)], chunksize=64))
    return folder


def decoding_floor_ms(folder: Path, sample: int = 300) -> float:
    """decode_to_pixels of the job's JPEGs to the model's input, in this process: what no design avoids."""
    from imageclf.models.images import decode_to_pixels

    files = sorted(folder.glob("*.jpg"))[:sample]
    blobs = [f.read_bytes() for f in files]
    start = time.process_time()
    for blob in blobs:
        decode_to_pixels(blob, (SIZE, SIZE), 64_000_000, "squash")
    return (time.process_time() - start) * 1000 / len(blobs)


def role(process: psutil.Process) -> str:
    line = " ".join(process.cmdline())
    if "--queues interactive" in line:  # the model worker: its Celery main process, or the pool child
        return "model: pool child" if "--queues interactive" in " ".join(process.parent().cmdline()) else \
            "model: main"
    return next((name for key, name in ROLES if key in line), "other")


class Meter:
    """CPU seconds by role of the service's processes and Redis, Redis' commands, and the machine's busy time."""

    def __init__(self, roots: list[int], redis_url: str) -> None:
        self.roots = [psutil.Process(pid) for pid in roots]
        self.redis = redis.Redis.from_url(redis_url)
        self.redis_pid = int(self.redis.info("server")["process_id"])

    def read(self) -> dict[str, Any]:
        cpu: dict[str, float] = {}
        seen: set[int] = set()
        for root in self.roots:
            for process in [root, *root.children(recursive=True)]:
                if process.pid in seen:
                    continue
                seen.add(process.pid)
                try:
                    name = "Redis" if process.pid == self.redis_pid else role(process)
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                cpu[name] = cpu.get(name, 0.0) + times.user + times.system
        if self.redis_pid not in seen:
            times = psutil.Process(self.redis_pid).cpu_times()
            cpu["Redis"] = times.user + times.system
        stats = self.redis.info("commandstats")
        machine = psutil.cpu_times()
        return {"cpu": cpu, "calls": sum(v["calls"] for v in stats.values()),
                "commands": {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()},
                "busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0), "all": sum(machine),
                "wall": time.monotonic()}


def _difference(before: dict[str, Any], after: dict[str, Any], images: int, floor_ms: float) -> dict[str, Any]:
    wall = after["wall"] - before["wall"]
    cpu = {name: after["cpu"].get(name, 0.0) - before["cpu"].get(name, 0.0) for name in after["cpu"]}
    total_ms = sum(cpu.values()) * 1000 / images
    cores = psutil.cpu_count()
    return {
        "images": images, "wall_s": round(wall, 2), "images_per_s": round(images / wall, 1),
        "cores": cores, "cores_busy": round((after["busy"] - before["busy"]) / (after["all"] - before["all"]), 3),
        "target_images_per_s": round(0.85 * cores * 1000 / (floor_ms + 1.0), 1),
        "cpu_ms_per_image": {name: round(seconds * 1000 / images, 3) for name, seconds in sorted(cpu.items())},
        "all_ms_per_image": round(total_ms, 3), "but_decoding_ms_per_image": round(total_ms - floor_ms, 3),
        "redis_commands_per_image": round((after["calls"] - before["calls"]) / images, 2),
        "redis_commands": dict(sorted(((name, round((calls - before["commands"].get(name, 0)) / images, 3))
                                       for name, calls in after["commands"].items()
                                       if calls > before["commands"].get(name, 0)), key=lambda kv: -kv[1])[:8]),
    }


def profile(meter: Meter, folder: Path, seconds: int) -> list[subprocess.Popen]:
    """py-spy, for `seconds`, on one process of each role (collapsed stacks in `folder`/<role>.txt)."""
    chosen: dict[str, int] = {}
    for root in meter.roots:
        for process in [root, *root.children(recursive=True)]:
            with_children = process.children()
            name = role(process)
            if name in ("decoders", "model: pool child", "API", "model: main") and name not in chosen \
                    and not (name in ("decoders", "API") and with_children):  # a pool's child, not its master
                chosen[name] = process.pid
    folder.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration",
                              str(seconds), "--format", "raw", "--rate", "50", "--nonblocking", "-o",
                              str(folder / f"{name.replace(':', '').replace(' ', '-')}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in chosen.items()]


def run_job(scratch: Scratch, meter: Meter, images: int, floor_ms: float, profile_to: Path | None = None,
            **post: Any) -> dict[str, Any]:
    """Submit one job (`post`: httpx.post's files or data), wait for it, and measure it (and profile it)."""
    profilers = profile(meter, profile_to, 20) if profile_to else []
    before = meter.read()
    response = httpx.post(scratch.svc.url + "/jobs", timeout=600, **post)
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    while True:
        body = httpx.get(f"{scratch.svc.url}/result/{job}", timeout=30).json()
        if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            break
        time.sleep(0.5)
    after = meter.read()
    for profiler in profilers:
        profiler.wait()
    assert body["status"] == "SUCCESS", body.get("error")
    result = body["result"]
    assert result.get("succeeded", len(result.get("frames", []))) == images, result.get("failed")
    return _difference(before, after, images, floor_ms)


def zipped(folder: Path, work: Path) -> Path:
    path = work / "photos.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(folder.glob("*.jpg")):
            archive.write(file, f"photos/{file.name}")
    return path


def env(images: int, folder: Path, decoders: int, bulk_batch: int = 32) -> dict[str, str]:
    """The service's settings: a model batch (and a job's chunk) of max(32, `bulk_batch`) images."""
    batch = str(max(32, bulk_batch))
    return {"BULK_BATCH_SIZE": str(bulk_batch), "BATCH_SIZE": batch, "JOB_CHUNK": batch,
            "DECODER_CONCURRENCY": str(decoders),
            "JOB_SOURCE_ROOTS": str(folder), "MAX_JOB_FILES": str(images + 10), "MAX_JOB_UPLOAD_MB": "16384",
            "MAX_UNZIPPED_MB": "16384", "CUDA_VISIBLE_DEVICES": ""}


def bulk_runs(images: int, bulk_batch: int, profile_to: Path | None) -> dict[str, Any]:
    folder = jpegs(images)
    floor_ms = decoding_floor_ms(folder)
    cores = psutil.cpu_count() or 1
    report: dict[str, Any] = {"decoding_floor_ms": round(floor_ms, 3), "runs": {}}
    with scratch_service("near-free", env(images, folder, cores, bulk_batch), "bulk-job-", size=SIZE) as scratch:
        meter = Meter([scratch.svc.proc.pid], scratch.redis_url)
        archive = zipped(folder, scratch.work)
        with open(archive, "rb") as f:
            report["runs"]["zip"] = run_job(scratch, meter, images, floor_ms, profile_to and profile_to / "zip",
                                            files={"images": ("photos.zip", f)})
        archive.unlink()
        report["runs"]["source folder"] = run_job(scratch, meter, images, floor_ms,
                                                  profile_to and profile_to / "source", data={"source": str(folder)})
        second = subprocess.Popen([sys.executable, "-m", "imageclf", "worker", "--decoders-only"], cwd=ROOT,
                                  env={**os.environ, **scratch.svc.env, **env(images, folder, cores, bulk_batch)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(20)  # its decoders start and announce themselves
            meter = Meter([scratch.svc.proc.pid, second.pid], scratch.redis_url)
            report["runs"]["source folder, a second set of decoders"] = run_job(
                scratch, meter, images, floor_ms, data={"source": str(folder)})
        finally:
            second.terminate()
            second.wait(60)
    return report


def video(minutes: float) -> Path:
    """An H.264 video of `minutes`, 1280×720 at 30 fps, a keyframe every 2 s (a camera's), moving content; made
    once, kept in var/."""
    import av

    path = ROOT / "var" / f"bench-video-{minutes:g}min-720p.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    background = rng.integers(0, 255, (720 // 16, 1280 // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "veryfast", "g": "60", "crf": "28"}
        for i in range(int(minutes * 60 * 30)):
            frame = np.roll(background, (i * 3, i * 5), axis=(0, 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_runs(minutes: float) -> dict[str, Any]:
    path = video(minutes)
    frames = int(minutes * 60 * 2)
    runs: dict[str, Any] = {}
    for decoders in (1, psutil.cpu_count() or 1):
        with scratch_service("near-free", {**env(frames, path.parent, decoders), "MAX_VIDEO_FRAMES": str(frames)},
                             "bulk-video-", size=SIZE) as scratch:
            meter = Meter([scratch.svc.proc.pid], scratch.redis_url)
            with open(path, "rb") as f:
                runs[f"{decoders} decoder process(es)"] = run_job(
                    scratch, meter, frames, 0.0, files={"video": (path.name, f, "video/mp4")},
                    data={"fps": "2", "max_frames": str(frames)})
    rates = [run["images_per_s"] for run in runs.values()]
    return {"minutes": minutes, "frames": frames, "runs": runs, "gain": round(rates[-1] / rates[0], 2)}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Bulk jobs on a near-free model, BULK_BATCH_SIZE {report.get('bulk_batch_size', 32)} "
             f"({report['machine']})", ""]
    if "runs" in report:
        lines += [*_images_table(report), ""]
    if "video" in report:
        v = report["video"]
        lines += [f"A {v['minutes']:g}-minute video (1280×720, 30 fps, a keyframe every 2 s) sampled at 2 fps "
                  f"({v['frames']} frames):", ""]
        for name, run in v["runs"].items():
            lines.append(f"- {name}: {run['images_per_s']} frames/s, {run['cores_busy']:.0%} of the cores busy")
        lines.append(f"- gain: {v['gain']}×")
    return "\n".join(lines) + "\n"


def _images_table(report: dict[str, Any]) -> list[str]:
    lines = [f"One job of {report['images']:,} distinct 1024×768 JPEGs.", "",
             f"Decoding floor (decode_to_pixels to 224×224 in one process): {report['decoding_floor_ms']} ms an image.",
             "", "| per image | " + " | ".join(report["runs"]) + " |", "|---" * (len(report["runs"]) + 1) + "|"]
    runs = list(report["runs"].values())
    rows = [("throughput, img/s", "images_per_s"), ("target: 0.85 × cores × 1000 ÷ (floor + 1 ms)",
                                                     "target_images_per_s"),
            ("cores busy (machine)", "cores_busy"), ("all service processes, ms CPU", "all_ms_per_image"),
            ("everything but decoding, ms CPU", "but_decoding_ms_per_image"),
            ("Redis commands", "redis_commands_per_image")]
    for title, key in rows:
        lines.append(f"| {title} | " + " | ".join(str(run[key]) for run in runs) + " |")
    roles = sorted({name for run in runs for name in run["cpu_ms_per_image"]})
    for name in roles:
        lines.append(f"| {name}, ms CPU | " + " | ".join(str(run["cpu_ms_per_image"].get(name, "—")) for run in runs)
                     + " |")
    lines += ["", "Redis commands per image, the most frequent:", ""]
    for name, run in report["runs"].items():
        lines.append(f"- {name}: " + ", ".join(f"{cmd} {n}" for cmd, n in run["redis_commands"].items()))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--video-minutes", type=float, default=0.0)
    parser.add_argument("--bulk-batch-size", type=int, default=32,
                        help="BULK_BATCH_SIZE: 32 as on a GPU host (the default there: BATCH_SIZE); 1 is a CPU "
                             "host's default; above 32 it is the model's BATCH_SIZE and JOB_CHUNK too")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=Path, help="py-spy each role's process during the zip and the source "
                                                       "folder jobs (their first 20 s), collapsed stacks in this "
                                                       "folder")
    args = parser.parse_args()
    from benchmarks.service import machine

    report = {"images": args.images, "machine": machine(), "bulk_batch_size": args.bulk_batch_size,
              **(bulk_runs(args.images, args.bulk_batch_size, args.profile) if args.images else {})}
    if args.video_minutes:
        report["video"] = video_runs(args.video_minutes)
    publish(report, args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
