"""The whole service (`python -m imageclf.launch.run`) as a child process, for tests, benchmarks and soaks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from imageclf.launch.redis_server import free_port


class ServiceProcess:
    """Start imageclf.launch.run with `env` on free ports, wait until /readyz, stop it with SIGTERM.

    `command` starts it another way (an installed `imageclf run`), in `cwd`."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        self.env = env
        self.command = command or [sys.executable, "-m", "imageclf.launch.run"]
        self.cwd = cwd
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.flower_url = ""
        self.grpc_url = ""
        self.postgres_dir = ""

    def start(self, ready_timeout_s: float = 300.0, ready: Callable[[str], bool] | None = None) -> ServiceProcess:
        """Start it and wait until `ready(url)` (default: /readyz answers 200)."""
        port, flower_port, grpc_port = free_port(), free_port(), free_port()
        env = {**os.environ, **self.env, "PORT": str(port), "FLOWER_PORT": str(flower_port),
               "GRPC_PORT": str(grpc_port), "HOST": "127.0.0.1"}
        if not env.get("DATABASE_URL") and not env.get("POSTGRES_DATA_DIR"):  # its own embedded PostgreSQL
            self.postgres_dir = tempfile.mkdtemp(prefix="imageclf-postgres-")
            env["POSTGRES_DATA_DIR"] = self.postgres_dir
        self.url, self.flower_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}"
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imageclf.launch.run exited early:\n{self.log_tail()}")
            try:
                if ready(self.url) if ready else httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"service not ready after {ready_timeout_s:g} s:\n{self.log_tail()}")

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
                raise RuntimeError(f"imageclf.launch.run did not stop within {timeout_s:g} s") from None
        self.log.close()
        if self.postgres_dir:
            shutil.rmtree(self.postgres_dir, ignore_errors=True)
        return self.proc.returncode
