"""A whole service on a scratch Redis with a user model built for the purpose, for the benchmarks.

The model is either near-free (mean colour, then a softmax over 10 classes: what is measured is the
service's own work) or ResNet50 with random weights (a real model's cost). Everything lives in a
temporary folder that goes when the service stops.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imageclf.launch.redis_server import start_scratch_redis
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import ProcessGroup

MODEL = "held_out"
SIZE = 64  # the near-free model's input


@dataclass
class Scratch:
    svc: ServiceProcess
    redis_url: str
    work: Path
    classes: list[str]  # ten of the model's class names, for labelled datasets


def model_repository(work: Path, kind: str, size: int = SIZE) -> tuple[Path, list[str]]:
    """A model repository with the model (the near-free one taking `size`×`size` images), and the class names its
    dataset uses."""
    import keras

    repo = work / "repository"
    (repo / MODEL / "1").mkdir(parents=True)
    if kind == "resnet50":
        labels = [f"class_{i}" for i in range(1000)]
        config = {"preprocess": "caffe"}
        keras.utils.set_random_seed(1)
        model = keras.applications.ResNet50(weights=None)
    else:
        labels = [f"colour_{i}" for i in range(10)]
        config = {"preprocess": "scale", "input_size": [size, size]}
        model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(len(labels), activation="softmax")])
        weights = np.random.default_rng(1).normal(0, 6.0, (3, len(labels))).astype(np.float32)
        model.layers[-1].set_weights([weights, -weights.mean(axis=0) / 2])
    (repo / MODEL / "labels.txt").write_text("\n".join(labels) + "\n")
    (repo / MODEL / "config.json").write_text(json.dumps(config))
    model.save(repo / MODEL / "1" / "model.keras")
    return repo, labels[:10]



@contextmanager
def scratch_service(kind: str, env: dict[str, str], prefix: str, size: int = SIZE) -> Iterator[Scratch]:
    """`imageclf.launch.run` serving a `kind` model (near-free, taking `size`×`size` images, or resnet50) with `env`, on
    its own Redis."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    group = ProcessGroup()
    try:
        repo, classes = model_repository(work, kind, size)
        redis_url = start_scratch_redis(group, work)
        svc = ServiceProcess(env={"REDIS_URL": redis_url, "MODEL_REPOSITORY": str(repo), "MODELS": MODEL,
                                  "UPLOAD_DIR": str(work / "uploads"), **env}, log_path=work / "service.log").start()
        try:
            yield Scratch(svc, redis_url, work, classes)
        finally:
            svc.stop()
    finally:
        group.stop_all()
        shutil.rmtree(work, ignore_errors=True)
