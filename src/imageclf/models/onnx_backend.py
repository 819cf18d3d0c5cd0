"""The ONNX Runtime backend: the worker's own compiled graph exported once with tf2onnx.

Measured here (CPU, docs/benchmarks/pipeline.md): 1.7× TensorFlow's raw ResNet50 throughput;
probabilities within 3e-6 of TensorFlow's on the shared photos. The export (seconds to
a minute) is cached under MODEL_CACHE_DIR, keyed by model name and the weights file's
size and mtime; random weights are never cached.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

log = logging.getLogger(__name__)
_OPSET = 17


def _cache_path(name: str, weights: str, cache_dir: str) -> str | None:
    if weights == "random" or not cache_dir:
        return None
    if weights == "imagenet":
        key = "imagenet"
    else:
        stat = os.stat(weights)
        key = hashlib.sha256(f"{os.path.abspath(weights)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{name}-{key}-opset{_OPSET}.onnx")


def session(model: bytes | str) -> ort.InferenceSession:
    """An ONNX Runtime session for a serialized model or a file, on the GPU when there is one."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(model, options, providers=providers)


def onnx_infer(graph: tf.types.experimental.GenericFunction, name: str, weights: str,
               cache_dir: str) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session running `graph` (uint8 pixels → probabilities).

    `weights` ("imagenet", "random" or the file the model came from) keys the cache.
    """
    path = _cache_path(name, weights, cache_dir)
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            model_bytes = f.read()
        log.info("ONNX model loaded from %s", path)
    else:
        proto, _ = tf2onnx.convert.from_function(graph, input_signature=graph.input_signature, opset=_OPSET)
        model_bytes = proto.SerializeToString()
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(model_bytes)
            os.replace(tmp, path)  # atomic: concurrent workers never read half a file
            log.info("ONNX model exported to %s", path)
    runner = session(model_bytes)
    input_name = runner.get_inputs()[0].name
    return lambda pixels: runner.run(None, {input_name: pixels})[0]
