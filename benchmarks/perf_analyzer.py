"""Triton's perf_analyzer against this service's Open Inference Protocol endpoints (HTTP and gRPC).

    python -m benchmarks.perf_analyzer --install          # or: make perf-analyzer
    python -m benchmarks.perf_analyzer --url http://127.0.0.1:5000 --grpc 127.0.0.1:8001 --model resnet50

perf_analyzer is a C++ binary. PyPI's `perf-analyzer` is an empty placeholder, and the
tritonclient wheels stopped shipping the binary after 2.45, so it is taken from the
tritonclient 2.45.0 manylinux wheel into .venv/perf_analyzer/. It needs libb64 (Debian's
libb64-0d, installed here when running as root) and libcudart.so.12 (PyPI's
nvidia-cuda-runtime-cu12, installed beside it; no GPU is used).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from benchmarks import ROOT

HOME = ROOT / ".venv" / "perf_analyzer"
BINARY = HOME / "bin" / "perf_analyzer"
LIBS = HOME / "lib"
WHEEL = "tritonclient==2.45.0"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _has_libb64() -> bool:
    return "libb64.so.0d" in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout


def install() -> Path:
    """The perf_analyzer binary, installed under .venv/perf_analyzer on first use."""
    if not _has_libb64():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError("perf_analyzer needs libb64: run 'sudo apt-get install libb64-0d'")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libb64-0d"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    if BINARY.exists():
        return BINARY
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--no-deps", "--only-binary=:all:", "--platform", "manylinux1_x86_64", "-d", tmp, WHEEL)
        [wheel] = Path(tmp).glob("tritonclient-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            [member] = [n for n in archive.namelist() if n.endswith("/data/bin/perf_analyzer")]
            BINARY.parent.mkdir(parents=True, exist_ok=True)
            BINARY.write_bytes(archive.read(member))
    BINARY.chmod(0o755)
    _pip("install", "--target", str(LIBS), "nvidia-cuda-runtime-cu12")
    return BINARY


def _library_path() -> str:
    cudart = next(LIBS.glob("nvidia/cuda_runtime/lib"), None)
    return ":".join(p for p in (str(cudart or ""), os.environ.get("LD_LIBRARY_PATH", "")) if p)


def input_data(image: bytes, path: Path) -> Path:
    """perf_analyzer's --input-data file: one encoded image as the `image` BYTES input.

    Binary ("b64") BYTES data is the tensor's serialized form: a 4-byte length, then the bytes.
    """
    raw = struct.pack("<I", len(image)) + image
    path.write_text(json.dumps({"data": [{"image": {"b64": base64.b64encode(raw).decode(), "shape": [1]}}]}))
    return path


def measure(address: str, protocol: str, model: str, data: Path, concurrency: int,
            window_ms: int = 5000) -> dict:
    """Throughput (infer/s) and latency percentiles (ms) at one concurrency, as perf_analyzer reports them."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "pa.csv"
        command = [str(install()), "-m", model, "-u", address, "-i", protocol, "--input-data", str(data),
                   "--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms),
                   "--stability-percentage", "25", "--max-trials", "6", "-f", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "LD_LIBRARY_PATH": _library_path()})
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-800:]}")
        [row] = list(csv.DictReader(report.open()))
    return {"protocol": protocol, "concurrency": concurrency, "images_per_s": float(row["Inferences/Second"]),
            **{f"{p}_ms": int(row[f"{p} latency"]) / 1000 for p in ("p50", "p90", "p99")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="only install perf_analyzer")
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the API (HTTP v2)")
    parser.add_argument("--grpc", default="127.0.0.1:8001", help="the gRPC service")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image", type=Path, default=ROOT.parent / "shared" / "assets" / "images" / "cat_720p.jpg")
    parser.add_argument("--concurrency", default="1,32")
    args = parser.parse_args()
    print("perf_analyzer:", install())
    if args.install:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data = input_data(args.image.read_bytes(), Path(tmp) / "data.json")
        for level in (int(c) for c in args.concurrency.split(",")):
            for protocol, address in (("http", args.url.split("://", 1)[-1]), ("grpc", args.grpc)):
                print(json.dumps(measure(address, protocol, args.model, data, level)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
