"""Start one model worker per GPU and model (pinned with CUDA_VISIBLE_DEVICES), or one per model on a CPU
host, a decoder worker, and with SHADOW_DEVICE a shadow worker per model (shadow copies only).

    imageclf worker            # every GPU nvidia-smi lists, else CPU workers
    CUDA_VISIBLE_DEVICES=0,2 imageclf worker   # only GPUs 0 and 2
    MODELS=resnet50,mobilenet_v2 imageclf worker   # two models on every GPU

Each model worker is prefork with concurrency 1 (one process owns one GPU and
batches inside) and serves the interactive queue before the bulk one. The decoder
worker (DECODER_CONCURRENCY processes, no TensorFlow) drives jobs: unzipping,
decoding images and sampling video frames, away from the model's process. Every
worker has a distinct node name and is restarted if it dies, except a model worker
whose model cannot be loaded (it recorded why in Redis): restarting it would only fail
again, so its reason is printed once and the other models keep serving. When no model
can be served at all, this exits non-zero (and `make run` with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import redis

from imageclf import settings
from imageclf.core.celery_app import CELERY_APP
from imageclf.core.model_records import read_failure
from imageclf.core.redis_clients import connect
from imageclf.launch.supervise import ProcessGroup, Stop, install_stop_handlers, log, returning_malloc
from imageclf.workers.roles import model_of_queues

_RESTART_DELAY_S = 2.0
#: Scheduling priority of shadow workers on the CPU (SHADOW_DEVICE=cpu; 19: the lowest).
SHADOW_NICENESS = 19


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
    celery = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--pool", "prefork", "--loglevel", "INFO"]
    commands = []
    gpus = [g for g in gpus if g != settings.SHADOW_DEVICE]  # a GPU given to the shadow workers is theirs
    for gpu in gpus or [""]:
        for model in models:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            if gpu and len(models) > 1:
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            node = f"{model}-gpu{gpu}" if gpu else model
            commands.append((f"worker-{node}", [
                *celery, "--concurrency", "1", "--hostname", f"{node}@%h",
                "--queues", f"{settings.interactive_queue(model)},{settings.bulk_queue(model)}"], env))
    if settings.SHADOW_DEVICE:
        device = "" if settings.SHADOW_DEVICE == "cpu" else settings.SHADOW_DEVICE
        for model in models:
            # On the CPU at the lowest priority: the model workers' requests take the cores first.
            nice = ["nice", "-n", str(SHADOW_NICENESS)] if not device else []
            commands.append((f"worker-{model}-shadow", [
                *nice, *celery, "--concurrency", "1", "--hostname", f"{model}-shadow@%h",
                "--queues", settings.SHADOW_PREFIX + model], {**os.environ, "CUDA_VISIBLE_DEVICES": device}))
    decoder_queues = f"{settings.JOBS_QUEUE},{settings.WEBHOOKS_QUEUE}"
    commands.append(("decoder", [*celery, "--concurrency", str(settings.DECODER_CONCURRENCY),
                                 "--prefetch-multiplier", "1", "--queues", decoder_queues,
                                 "--hostname", "decoder@%h"],
                     returning_malloc({**os.environ, "CUDA_VISIBLE_DEVICES": ""})))
    return commands


def served_model(argv: list[str]) -> str | None:
    """The model a worker command serves, None for a decoder: what the worker itself derives from its -Q."""
    return model_of_queues(argv[argv.index("--queues") + 1])


def _failure_since(client: redis.Redis, model: str | None, started: float) -> str | None:
    """Why `model` could not be loaded, if a worker recorded it after `started`."""
    if model is None:
        return None
    try:
        failure = read_failure(client, model)
    except redis.RedisError:
        return None
    return failure["error"] if failure and failure["at"] >= started else None


def supervise_workers(group: ProcessGroup, commands: list[tuple[str, list[str], dict[str, str]]]) -> int:
    """Run the workers until Stop, restarting any that exits; 1 once no model worker is left to run."""
    client = connect(settings.REDIS_URL or "redis://127.0.0.1:6379/0", socket_timeout=5)
    by_name = {name: (argv, env) for name, argv, env in commands}
    started: dict[str, float] = {}
    for name, argv, env in commands:
        queues = argv[argv.index("--queues") + 1]
        log(name, f"starting (queues {queues}, CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})")
        started[name] = time.time() - 1.0
        group.start(name, argv, env)
    models_left = {name for name, argv, _ in commands if served_model(argv)}
    while True:
        time.sleep(0.5)
        for name, proc in group.exited():
            group.stop_one(name, proc)
            model = served_model(by_name[name][0])
            error = _failure_since(client, model, started[name])
            if error is not None:
                log(name, f"model {model!r} cannot be served: {error}")
                models_left.discard(name)
                if not models_left:
                    log("workers", "no model can be served; stopping")
                    return 1
                continue
            log(name, f"exited with code {proc.returncode}; restarting in {_RESTART_DELAY_S:g} s")
            time.sleep(_RESTART_DELAY_S)
            started[name] = time.time() - 1.0
            group.start(name, *by_name[name])


def main(decoders_only: bool = False) -> int:
    install_stop_handlers()
    group = ProcessGroup()
    code = 0
    try:
        code = supervise_workers(group, worker_commands(gpu_ids(), [] if decoders_only else settings.MODELS))
    except Stop:
        pass
    finally:
        group.stop_all()
    return code


if __name__ == "__main__":
    sys.exit(main())
