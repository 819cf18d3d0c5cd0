"""Load a registry model with TensorFlow/Keras and run compiled, shape-stable inference.

Workers, benchmarks and tests share this module; it imports TensorFlow, so the API
never imports it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from imageclf.models.registry import ModelSpec

log = logging.getLogger(__name__)

# Keras' own copy of the class index, fetched (and md5-checked) like decode_predictions does.
_CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def _resolve(path: str) -> Callable:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def load_labels(class_index: str = "") -> list[str]:
    """ImageNet labels in class-id order from Keras' imagenet_class_index.json.

    `class_index` is a local path; empty means download Keras' file into its cache.
    """
    path = class_index or keras.utils.get_file(
        "imagenet_class_index.json", _CLASS_INDEX_URL, cache_subdir="models", file_hash=_CLASS_INDEX_MD5
    )
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    return [index[str(i)][1] for i in range(len(index))]


def build_keras_model(spec: ModelSpec, weights: str) -> keras.Model:
    """The Keras model for `spec` with `weights`: "imagenet", "random", or a file path.

    A `.keras` file is loaded whole (architecture and weights) and must match the
    spec's input shape; any other file is loaded as weights into the spec's builder.
    """
    if weights == "random":
        return _resolve(spec.builder)(weights=None, **spec.builder_kwargs)
    if weights == "imagenet":
        try:  # Keras downloads them the first time, into ~/.keras/models
            return _resolve(spec.builder)(weights="imagenet", **spec.builder_kwargs)
        except Exception as exc:  # Keras raises a bare Exception for a failed download
            if "URL fetch failure" not in str(exc):
                raise
            raise RuntimeError(
                f"could not download {spec.name}'s ImageNet weights ({exc}). Without internet access set "
                "MODEL_WEIGHTS to a weights file (.h5 or .keras), or MODEL_WEIGHTS=random to try the service "
                "with meaningless answers, or serve your own model (imageclf add-model, MODELS=...)") from exc
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL_WEIGHTS={weights!r} is neither imagenet, random nor a file")
    if weights.endswith(".keras"):
        model = keras.models.load_model(weights, compile=False)
        shape = tuple(model.input_shape[1:])
        if shape != spec.input_shape:
            raise ValueError(f"{weights} takes input {shape}, but model {spec.name!r} is {spec.input_shape}")
        return model
    return _resolve(spec.builder)(weights=weights, **spec.builder_kwargs)


def batch_buckets(max_batch: int) -> list[int]:
    """The padded batch sizes used up to `max_batch`: 1, 2, 4, 8, then multiples of 8.

    Few enough to warm up each at start, fine enough that padding wastes little
    (at most 7 rows above 8).
    """
    sizes = {b for b in (1, 2, 4, 8) if b < max_batch}
    sizes.update(range(8, max_batch, 8))
    sizes.add(max_batch)
    return sorted(sizes)


def compiled_graph(spec: ModelSpec, model: keras.Model) -> tf.types.experimental.GenericFunction:
    """One tf.function from uint8 HWC pixels to probabilities: cast + preprocess_input + model.

    Its batch dimension is unknown, so it is traced once; the ONNX export converts this same graph.
    """
    preprocess = _resolve(spec.preprocess)

    @tf.function(input_signature=[tf.TensorSpec((None, *spec.input_shape), tf.uint8, name="pixels")])
    def infer(pixels: tf.Tensor) -> tf.Tensor:
        return model(preprocess(tf.cast(pixels, tf.float32)), training=False)

    return infer


def tf_runner(graph: tf.types.experimental.GenericFunction) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 pixels in, probabilities out, through the traced function's one concrete graph called directly.

    A `tf.function` binds its arguments and looks up its trace on every call; its input signature
    fixes one concrete function, so the model worker calls that (a sixth of its process' Python time
    per batch went to the lookup around a near-free model, docs/benchmarks/per-image.md).
    """
    concrete = graph.get_concrete_function()
    return lambda pixels: concrete(tf.constant(pixels)).numpy()


class Classifier:
    """A compiled model version with its labels; batches are padded to a few fixed sizes when `pad` is set.

    `infer` maps a uint8 (n, H, W, 3) array to (n, classes) probabilities; preprocessing
    is inside it, so callers pass the raw pixels the API produced. Built-in models are
    version 1; `details` (preprocessing, file, ...) is what GET /models shows of it.
    """

    def __init__(self, name: str, input_shape: tuple[int, int, int], infer: Callable[[np.ndarray], np.ndarray],
                 labels: Sequence[str], max_batch: int, backend: str, pad: bool = True, version: int = 1,
                 resize: str = "squash", details: dict | None = None) -> None:
        self.name = name
        self.input_shape = input_shape
        self.version = version
        self.resize = resize
        self.details = details or {}
        self.labels = list(labels)
        self.buckets = batch_buckets(max_batch)
        self.max_batch = max_batch
        self.backend = backend
        self.pad = pad
        self._infer = infer

    def bucket_for(self, n: int) -> int:
        """The batch size `n` images run at: the smallest bucket that holds them, or `n` unpadded."""
        if not self.pad and 0 < n <= self.max_batch:
            return n
        for size in self.buckets:
            if size >= n:
                return size
        raise ValueError(f"batch of {n} exceeds the largest batch size {self.buckets[-1]}")

    @property
    def warm_sizes(self) -> list[int]:
        """Batch sizes to run once before serving: every padded size (a GPU autotunes each shape), or on a
        CPU only 1, which traces the graph (ResNet50 here: 2 s for the first call, then batches of 5, 13 or
        24 as fast on their first call as later), so a rollout's warm-up takes little from the serving version.
        """
        return self.buckets if self.pad else [1]

    def warm_up(self) -> float:
        """Run each of `warm_sizes` once so no request pays for tracing or autotuning; seconds taken."""
        start = time.perf_counter()
        for size in self.warm_sizes:
            self.predict(np.zeros((size, *self.input_shape), np.uint8))
        return time.perf_counter() - start

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for uint8 pixels of shape (n, H, W, 3)."""
        n = len(pixels)
        padded = self.bucket_for(n)
        if padded != n:
            pad = np.zeros((padded - n, *pixels.shape[1:]), pixels.dtype)
            pixels = np.concatenate([pixels, pad])
        return self._infer(pixels)[:n]

    def top(self, probabilities: np.ndarray, k: int) -> list[dict]:
        """The `k` most likely classes of one probability row, most likely first."""
        k = max(1, min(k, len(probabilities)))
        best = np.argpartition(probabilities, -k)[-k:]
        best = best[np.argsort(probabilities[best])[::-1]]
        return [
            {"label": self.labels[i], "class_id": int(i), "probability": float(probabilities[i])}
            for i in best
        ]

    def describe(self) -> dict:
        """What GET /models and the served-model record say about this version."""
        height, width, _ = self.input_shape
        return {"version": self.version, "input_size": [height, width], "resize": self.resize,
                "labels": len(self.labels), "backend": self.backend,
                "padded_batch_sizes": self.buckets if self.pad else None, **self.details}


BACKENDS = ("tensorflow", "onnxruntime")


def gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def load_classifier(spec: ModelSpec, weights: str, class_index: str, max_batch: int,
                    backend: str = "tensorflow", cache_dir: str = "", pad: bool | None = None) -> Classifier:
    """Build the model, compile it for `backend` and return a Classifier (not yet warmed up).

    `pad` (default: only when a GPU is visible) rounds batches up to a few fixed sizes. GPUs
    autotune kernels per shape, so they need it; on CPU neither backend retraces for a new
    batch size and padding 17 rows to 24 measured 35% slower, so CPU batches run as they are.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown BACKEND {backend!r}; choose one of {', '.join(BACKENDS)}")
    model = build_keras_model(spec, weights)
    labels = load_labels(class_index)
    if int(model.output_shape[-1]) != len(labels):
        raise ValueError(f"model has {model.output_shape[-1]} outputs but the class index has {len(labels)} labels")
    graph = compiled_graph(spec, model)
    if backend == "onnxruntime":
        from imageclf.models.onnx_backend import onnx_infer

        infer = onnx_infer(graph, spec.name, weights, cache_dir)
    else:
        infer = tf_runner(graph)
    return Classifier(spec.name, spec.input_shape, infer, labels, max_batch, backend,
                      gpu_visible() if pad is None else pad,
                      details={"preprocess": spec.preprocess, "weights": weights})
