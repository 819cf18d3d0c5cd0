"""Starting the real service (scripts.run as a subprocess) and reading the shared assets."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "assets"
MOBILENET_FILE = SHARED / "models" / "mobilenet_v1_0.75_224_imagenet.keras"
CLASS_INDEX = SHARED / "imagenet_class_index.json"


def labelled_photos() -> list[dict]:
    """MANIFEST rows of photos with an unambiguous expected class."""
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    photos = [r for r in rows if r["kind"] == "image" and r["expected_class_id"]]
    assert photos, "MANIFEST.tsv lists no labelled photos"
    return photos


def free_port() -> int:
    from scripts.redis_server import free_port as pick

    return pick()


@dataclass
class Service:
    """One `python -m scripts.run` process tree and the addresses it serves."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    url: str = ""
    flower_url: str = ""
    extra: dict = field(default_factory=dict)

    def start(self, ready_timeout_s: float = 240.0) -> Service:
        port, flower_port = free_port(), free_port()
        env = {**os.environ, **self.env, "PORT": str(port), "FLOWER_PORT": str(flower_port), "HOST": "127.0.0.1"}
        self.url, self.flower_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "scripts.run"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"scripts.run exited early:\n{self.log_tail()}"
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"service not ready after {ready_timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 90.0) -> int:
        """SIGTERM, as a user's Ctrl-C or a supervisor would; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"scripts.run did not stop within {timeout_s:g} s") from None
        self.log.close()
        return self.proc.returncode
