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

from models.registry import ModelSpec

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
        return _resolve(spec.builder)(weights="imagenet", **spec.builder_kwargs)
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


class Classifier:
    """A model compiled once for uint8 HWC batches, run only at a few padded batch sizes.

    Preprocessing (cast + the model's preprocess_input) is inside the compiled graph,
    so callers pass the raw uint8 pixels the API produced.
    """

    def __init__(self, spec: ModelSpec, model: keras.Model, labels: Sequence[str], max_batch: int) -> None:
        self.spec = spec
        self.labels = list(labels)
        self.buckets = batch_buckets(max_batch)
        preprocess = _resolve(spec.preprocess)

        @tf.function(
            input_signature=[tf.TensorSpec((None, *spec.input_shape), tf.uint8)],
            reduce_retracing=True,
        )
        def infer(pixels: tf.Tensor) -> tf.Tensor:
            return model(preprocess(tf.cast(pixels, tf.float32)), training=False)

        self._infer = infer
        out_classes = int(model.output_shape[-1])
        if out_classes != len(self.labels):
            raise ValueError(f"model has {out_classes} outputs but the class index has {len(self.labels)} labels")

    def bucket_for(self, n: int) -> int:
        """The smallest padded batch size that holds `n` images."""
        for size in self.buckets:
            if size >= n:
                return size
        raise ValueError(f"batch of {n} exceeds the largest batch size {self.buckets[-1]}")

    def warm_up(self) -> float:
        """Run every padded size once so no request pays for tracing or autotuning; seconds taken."""
        start = time.perf_counter()
        for size in self.buckets:
            self.predict(np.zeros((size, *self.spec.input_shape), np.uint8))
        return time.perf_counter() - start

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for uint8 pixels of shape (n, H, W, 3)."""
        n = len(pixels)
        padded = self.bucket_for(n)
        if padded != n:
            pad = np.zeros((padded - n, *pixels.shape[1:]), pixels.dtype)
            pixels = np.concatenate([pixels, pad])
        return self._infer(tf.constant(pixels)).numpy()[:n]

    def top(self, probabilities: np.ndarray, k: int) -> list[dict]:
        """The `k` most likely classes of one probability row, most likely first."""
        k = max(1, min(k, len(probabilities)))
        best = np.argpartition(probabilities, -k)[-k:]
        best = best[np.argsort(probabilities[best])[::-1]]
        return [
            {"label": self.labels[i], "class_id": int(i), "probability": float(probabilities[i])}
            for i in best
        ]


def load_classifier(spec: ModelSpec, weights: str, class_index: str, max_batch: int) -> Classifier:
    """Build, compile and return a Classifier (not yet warmed up)."""
    model = build_keras_model(spec, weights)
    return Classifier(spec, model, load_labels(class_index), max_batch)
