"""What receiving a job's upload costs the API: CPU per image of a zip posted to `POST /jobs`.

    python -m benchmarks.job_upload --images 600 --kb 200

Starts an embedded Redis and the API alone (gunicorn, one worker, as `imageclf run` starts it; no model or
decoder worker, so nothing but the upload is measured), builds a zip of `--images` distinct files of about
`--kb` KB each, posts it `--repeat` times, and reads the API processes' CPU time from /proc before and after
each post. Prints CPU per image and per MB, and the wall time per post. With `--profile FILE`, py-spy records
the API worker during the posts (an SVG flame graph; collapsed stacks as text when FILE ends in .txt).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import psutil

from benchmarks import ROOT
from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import wait_until


def build_zip(images: int, kb: int) -> bytes:
    """A stored (uncompressed, as JPEGs gain nothing) zip of distinct random files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            archive.writestr(f"photos/{i:06d}.jpg", os.urandom(kb * 1000))
    return buffer.getvalue()


def cpu_s(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--kb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", help="write a py-spy flame graph of the API worker here (SVG)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="job-upload-"))
    port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis = subprocess.Popen(redis_argv(port, str(work / "redis"), durable=False), stdout=subprocess.DEVNULL)
    env = {**os.environ, "REDIS_URL": redis_url, "UPLOAD_DIR": str(work / "uploads"), "CUDA_VISIBLE_DEVICES": "",
           "MAX_JOB_FILES": str(args.images + 10), "MAX_JOB_UPLOAD_MB": "4096", "MAX_UNZIPPED_MB": "4096"}
    api = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "8", "--bind",
                            f"127.0.0.1:{api_port}", "imageclf.api:create_app()"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{api_port}"
    profiler = None
    try:
        assert wait_until(lambda: ping(redis_url), 15), "Redis did not start"

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, 60), "the API did not start"
        body = build_zip(args.images, args.kb)
        root = psutil.Process(api.pid)
        if args.profile:
            worker = root.children()[0].pid
            raw = ["--format", "raw"] if args.profile.endswith(".txt") else []  # collapsed stacks, as text
            profiler = subprocess.Popen(["py-spy", "record", "--pid", str(worker), "--output", args.profile,
                                         "--rate", "250", "--nonblocking", *raw], stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        with httpx.Client(timeout=600) as client:
            for n in range(args.repeat):
                before, started = cpu_s(root), time.perf_counter()
                response = client.post(url + "/jobs", files={"images": ("photos.zip", body, "application/zip")})
                wall, used = time.perf_counter() - started, cpu_s(root) - before
                # 503 is fine here: no decoder runs, but the upload was received, saved and listed before it.
                assert response.status_code in (202, 503), response.text[:300]
                print(f"post {n + 1}: {len(body) / 2**20:.0f} MB, {args.images} images: API CPU "
                      f"{1000 * used / args.images:.3f} ms per image ({1000 * used / (len(body) / 2**20):.2f} ms "
                      f"per MB), wall {wall:.2f} s, HTTP {response.status_code}")
    finally:
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
        api.terminate()
        api.wait(30)
        redis.terminate()
        redis.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
