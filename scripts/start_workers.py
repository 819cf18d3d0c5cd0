"""Start one model worker per GPU and model (pinned with CUDA_VISIBLE_DEVICES), or one per model on a CPU
host, and a decoder worker.

    python -m scripts.start_workers            # every GPU nvidia-smi lists, else CPU workers
    CUDA_VISIBLE_DEVICES=0,2 python -m scripts.start_workers   # only GPUs 0 and 2
    MODELS=resnet50,mobilenet_v2 python -m scripts.start_workers   # two models on every GPU

Each model worker is prefork with concurrency 1 (one process owns one GPU and
batches inside) and serves the interactive queue before the bulk one. The decoder
worker (DECODER_CONCURRENCY processes, no TensorFlow) drives jobs: unzipping,
decoding images and sampling video frames, away from the model's process. Every
worker has a distinct node name and is restarted if it dies. SIGINT/SIGTERM stop them all.
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


def worker_commands(gpus: list[str], models: list[str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, env) of each worker: one per GPU and model (one per model on a CPU host), and the decoder.

    Each model worker consumes its model's interactive queue, then its bulk queue (in that
    order: the first is served first). Models sharing a GPU let TensorFlow grow its memory
    instead of each taking the whole GPU.
    """
    celery = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "--loglevel", "INFO"]
    commands = []
    for gpu in gpus or [""]:
        for model in models:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            if gpu and len(models) > 1:
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            node = f"{model}-gpu{gpu}" if gpu else model
            commands.append((f"worker-{node}", [
                *celery, "--concurrency", "1", "--hostname", f"{node}@%h",
                "--queues", f"{settings.interactive_queue(model)},{settings.bulk_queue(model)}"], env))
    commands.append(("decoder", [*celery, "--concurrency", str(settings.DECODER_CONCURRENCY),
                                 "--prefetch-multiplier", "1", "--queues", settings.JOBS_QUEUE,
                                 "--hostname", "decoder@%h"], {**os.environ, "CUDA_VISIBLE_DEVICES": ""}))
    return commands


def supervise_workers(group: ProcessGroup, commands: list[tuple[str, list[str], dict[str, str]]]) -> None:
    """Run the workers until Stop, restarting any that exits."""
    by_name = {name: (argv, env) for name, argv, env in commands}
    for name, argv, env in commands:
        queues = argv[argv.index("--queues") + 1]
        log(name, f"starting (queues {queues}, CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})")
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
        supervise_workers(group, worker_commands(gpu_ids(), settings.MODELS))
    except Stop:
        pass
    finally:
        group.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
