"""Users' own models, made here the way users make them: nothing downloaded.

A small Keras CNN trained on nothing (random weights, fixed seed) with 4 classes and a
160×160 input, saved as legacy `.h5`, `.keras` and a SavedModel; and a PyTorch-style
ONNX classifier (NCHW, ImageNet mean/std, logits) written with `onnx.helper`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ["healthy", "rust", "scab", "blight"]


def keras_cnn(seed: int, size: tuple[int, int] = (160, 160), classes: int = len(LABELS)):
    """A Keras 2-style classifier for /255 inputs; different seeds give different models."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((*size, 3)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation="softmax"),
    ])


def onnx_classifier(path: Path, seed: int, size: tuple[int, int] = (128, 96), classes: int = len(LABELS)) -> None:
    """An NCHW float model giving logits, as `torch.onnx.export` writes one: conv, relu, pool, linear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "fc_w": rng.normal(0, 1.0, (classes, 8)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (classes,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "user_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, *size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_model(repository: Path, name: str, version: int, model_path_writer, config: dict | None = None,
                labels: list[str] = LABELS) -> Path:
    """Lay out <repository>/<name>/{config.json,labels.txt,<version>/...}; returns the version folder.

    `model_path_writer(version_dir)` saves the model inside the version folder.
    """
    model_dir = repository / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    if config is not None:
        (model_dir / "config.json").write_text(json.dumps(config))
    model_path_writer(version_dir)
    return version_dir


def colour_classifier(seed: int, size: tuple[int, int] = (160, 160), classes: int = len(LABELS)):
    """A classifier of an image's mean colour (pool, then a softmax layer with strong random weights): unlike
    a random CNN, which says one class for nearly every image, it spreads coloured images over its classes,
    so two seeds agree on some images and not on others."""
    import keras

    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((*size, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(classes, activation="softmax")])
    weights = rng.normal(0, 6.0, (3, classes)).astype(np.float32)
    model.layers[-1].set_weights([weights, -weights.mean(axis=0) / 2])
    return model


def coloured_images(count: int, seed: int = 0, size: tuple[int, int] = (160, 160)) -> list[bytes]:
    """PNGs of two-coloured images, different for each index."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        pixels = np.empty((*size, 3), np.uint8)
        pixels[...] = rng.integers(0, 256, 3)
        pixels[rng.integers(0, size[0] // 2):, rng.integers(0, size[1] // 2):] = rng.integers(0, 256, 3)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images
