"""Load one version of a user's model from the repository as a Classifier (imports TensorFlow).

Keras (.keras, legacy .h5) and SavedModel versions run as one tf.function from uint8
pixels: cast, channel order, scale/mean/std, layout, model, softmax/sigmoid, the same
shape-stable call as the built-in models. ONNX versions run in ONNX Runtime with the
same preprocessing in NumPy. Every failure is a RepositoryError naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from imageclf.models.keras_model import Classifier, gpu_visible, tf_runner
from imageclf.models.repository import ModelConfig, RepositoryError, model_file, read_config, read_labels

Infer = Callable[[np.ndarray], np.ndarray]


def load_version(name: str, model_dir: Path, version: int, max_batch: int, backend: str = "tensorflow",
                 cache_dir: str = "", pad: bool | None = None) -> Classifier:
    """Version `version` of the repository model in `model_dir`, checked against its labels (not warmed up).

    `backend` "onnxruntime" also runs Keras and SavedModel versions in ONNX Runtime
    (exported once with tf2onnx, cached in `cache_dir`); ONNX files always run there.
    """
    config = read_config(model_dir)
    labels = read_labels(model_dir)
    path, fmt = model_file(model_dir / str(version))
    try:
        if fmt == "onnx":
            (height, width), infer = _onnx(path, config)
            backend = "onnxruntime"
        else:
            (height, width), graph = (_keras if fmt in ("keras", "h5") else _saved_model)(path, config)
            if backend == "onnxruntime":
                from imageclf.models.onnx_backend import onnx_infer

                source = path / "saved_model.pb" if fmt == "savedmodel" else path
                infer = onnx_infer(graph, f"{name}-v{version}", str(source), cache_dir)
            else:
                infer = tf_runner(graph)
        outputs = infer(np.zeros((1, height, width, 3), np.uint8))
    except RepositoryError:
        raise
    except Exception as exc:  # whatever the format's loader raises: say which file, keep it to one line
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise RepositoryError(f"{path}: cannot be loaded ({type(exc).__name__}: {first_line})") from exc
    _check_outputs(outputs, labels, path, model_dir)
    details = {"format": fmt, "file": str(path),
               **{k: v for k, v in config.describe().items() if k not in ("input_size", "resize")}}
    return Classifier(name, (height, width, 3), infer, labels, max_batch, backend,
                      gpu_visible() if pad is None else pad, version=version, resize=config.resize, details=details)


def _check_outputs(outputs: np.ndarray, labels: Sequence[str], path: Path, model_dir: Path) -> None:
    shape = tuple(np.shape(outputs))
    if len(shape) != 2 or shape[0] != 1:
        raise RepositoryError(f"{path}: the model's output has shape {shape} for one image; a classifier "
                              "gives (1, classes)")
    if shape[1] != len(labels):
        raise RepositoryError(f"{path}: the model has {shape[1]} outputs but {model_dir / 'labels.txt'} has "
                              f"{len(labels)} labels")


def _input_size(dims: Sequence, config: ModelConfig, path: Path) -> tuple[int, int]:
    """(height, width) from the model's input shape (batch dimension first), or from config.json when open."""
    dims = list(dims)
    if len(dims) != 4:
        raise RepositoryError(f"{path}: the model takes input of shape {dims}; an image classifier takes "
                              f"4 dimensions ({'N, C, H, W' if config.layout == 'NCHW' else 'N, H, W, C'})")
    channels, height, width = (dims[1], dims[2], dims[3]) if config.layout == "NCHW" else (dims[3], dims[1], dims[2])
    if isinstance(channels, int) and channels != 3:
        hint = " (is 'layout' right in config.json?)" if channels in dims[1:] and 3 in dims[1:] else ""
        raise RepositoryError(f"{path}: the model takes {channels} channels; this service sends RGB (3){hint}")
    known = all(isinstance(v, int) and v > 0 for v in (height, width))
    if not known:
        if config.input_size is None:
            raise RepositoryError(f"{path}: the model's input shape {dims} leaves the image size open; set "
                                  "'input_size': [height, width] in config.json")
        return config.input_size
    if config.input_size is not None and tuple(config.input_size) != (height, width):
        raise RepositoryError(f"{path}: config.json's 'input_size' {list(config.input_size)} differs from the "
                              f"model's own input {height}x{width}")
    return height, width


def _constants(config: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    as_array = lambda v: np.asarray(v, np.float32).reshape(1, 1, 1, 3)  # noqa: E731
    return as_array(config.scale), as_array(config.mean), as_array(config.std)


def _preprocess_tf(pixels: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    scale, mean, std = _constants(config)
    x = tf.cast(pixels, tf.float32)
    if config.channels == "BGR":
        x = x[..., ::-1]
    x = (x * scale - mean) / std
    return tf.transpose(x, [0, 3, 1, 2]) if config.layout == "NCHW" else x


def _output_tf(y: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    y = tf.cast(y, tf.float32)
    if config.output == "logits":
        return tf.nn.softmax(y, axis=-1)
    return tf.sigmoid(y) if config.output == "sigmoid" else y


def _compile(model: Callable[[tf.Tensor], tf.Tensor], size: tuple[int, int],
             config: ModelConfig) -> tf.types.experimental.GenericFunction:
    @tf.function(input_signature=[tf.TensorSpec((None, *size, 3), tf.uint8, name="pixels")])
    def infer(pixels: tf.Tensor) -> tf.Tensor:
        return _output_tf(model(_preprocess_tf(pixels, config)), config)

    return infer


def _keras(path: Path, config: ModelConfig) -> tuple[tuple[int, int], tf.types.experimental.GenericFunction]:
    import keras

    model = keras.models.load_model(path, compile=False)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise RepositoryError(f"{path}: the model has {len(model.inputs)} inputs and {len(model.outputs)} "
                              "outputs; a classifier has one of each")
    size = _input_size(model.inputs[0].shape, config, path)
    return size, _compile(lambda x: model(x, training=False), size, config)


def _saved_model(path: Path, config: ModelConfig) -> tuple[tuple[int, int], tf.types.experimental.GenericFunction]:
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise RepositoryError(f"{path}: has no 'serving_default' signature (export it with "
                              "model.export() or tf.saved_model.save(..., signatures=...))")
    _, inputs = signature.structured_input_signature
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise RepositoryError(f"{path}: the serving signature has {len(inputs)} inputs and {len(outputs)} "
                              "outputs; a classifier has one of each")
    (input_name, spec), = inputs.items()
    (output_name,) = outputs
    size = _input_size(spec.shape.as_list(), config, path)

    def call(x: tf.Tensor) -> tf.Tensor:
        # Through `loaded`, so its variables live as long as the graph that calls them.
        return loaded.signatures["serving_default"](**{input_name: tf.cast(x, spec.dtype)})[output_name]

    return size, _compile(call, size, config)


def _onnx(path: Path, config: ModelConfig) -> tuple[tuple[int, int], Infer]:
    from imageclf.models.onnx_backend import session

    runner = session(str(path))
    inputs, outputs = runner.get_inputs(), runner.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise RepositoryError(f"{path}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                              "a classifier has one of each")
    if inputs[0].type != "tensor(float)":
        raise RepositoryError(f"{path}: the model's input is {inputs[0].type}; this service feeds tensor(float)")
    size = _input_size(inputs[0].shape, config, path)
    scale, mean, std = _constants(config)
    input_name = inputs[0].name

    def infer(pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32)
        if config.channels == "BGR":
            x = x[..., ::-1]
        x = (x * scale - mean) / std
        if config.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        y = runner.run(None, {input_name: np.ascontiguousarray(x, np.float32)})[0].astype(np.float32)
        if config.output == "logits":
            e = np.exp(y - y.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-y)) if config.output == "sigmoid" else y

    return size, infer
