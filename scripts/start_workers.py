"""Start one Celery worker per GPU (pinned with CUDA_VISIBLE_DEVICES), or one CPU worker.

    python -m scripts.start_workers            # every GPU nvidia-smi lists, else one CPU worker
    CUDA_VISIBLE_DEVICES=0,2 python -m scripts.start_workers   # only GPUs 0 and 2

Each worker is prefork with concurrency 1 (one process owns one GPU and batches
inside), has a distinct node name, and is restarted if it dies. SIGINT/SIGTERM
stop them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import settings
from scripts.supervise import ProcessGroup, Stop, install_stop_handlers, log

_RESTART_DELAY_S = 2.0


def gpu_ids() -> list[str]:
    """GPUs to use: CUDA_VISIBLE_DEVICES when set (empty = none), else those nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.split(":")[0].split()[1] for line in listing.splitlines() if line.startswith("GPU ")]


def worker_commands(gpus: list[str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, env) of each worker: one per GPU, or a single CPU worker when there is none."""
    base = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "1",
            "--queues", settings.INTERACTIVE_QUEUE, "--loglevel", "INFO"]
    if not gpus:
        return [("worker-cpu", [*base, "--hostname", "cpu@%h"], {**os.environ, "CUDA_VISIBLE_DEVICES": ""})]
    return [
        (f"worker-gpu{gpu}", [*base, "--hostname", f"gpu{gpu}@%h"], {**os.environ, "CUDA_VISIBLE_DEVICES": gpu})
        for gpu in gpus
    ]


def supervise_workers(group: ProcessGroup, commands: list[tuple[str, list[str], dict[str, str]]]) -> None:
    """Run the workers until Stop, restarting any that exits."""
    by_name = {name: (argv, env) for name, argv, env in commands}
    for name, argv, env in commands:
        log(name, f"starting (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}, model {settings.MODEL})")
        group.start(name, argv, env)
    while True:
        time.sleep(0.5)
        for name, proc in group.exited():
            log(name, f"exited with code {proc.returncode}; restarting in {_RESTART_DELAY_S:g} s")
            group.stop_one(name, proc)
            time.sleep(_RESTART_DELAY_S)
            group.start(name, *by_name[name])


def main() -> int:
    install_stop_handlers()
    group = ProcessGroup()
    try:
        supervise_workers(group, worker_commands(gpu_ids()))
    except Stop:
        pass
    finally:
        group.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
