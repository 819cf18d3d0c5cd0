"""The model repository on disk: the user's own models, in Triton's / TF Serving's layout.

    <MODEL_REPOSITORY>/<name>/config.json       preprocessing, layout, resize, output (all optional)
    <MODEL_REPOSITORY>/<name>/labels.txt        one class name per line; line i is class_id i
    <MODEL_REPOSITORY>/<name>/<version>/model.keras | model.h5 | saved_model/ | model.onnx

Pure Python, no TensorFlow: the worker reads it before loading, `imageclf.launch.add_model`
writes it. Every problem is a RepositoryError whose message names the file (and the
key) at fault, because that one line is what `make run` prints when it refuses to start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imageclf.models.images import RESIZE_MODES

#: The file names a version folder may hold, and the format each is loaded as.
MODEL_FILES = {"model.keras": "keras", "model.h5": "h5", "saved_model": "savedmodel", "model.onnx": "onnx"}

#: Keras' and torchvision's ImageNet statistics, for the family presets.
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

#: preset → (scale, mean, std, channels): what Keras' `preprocess_input(mode=...)` does to 0-255 pixels.
PRESETS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...], str]] = {
    "caffe": (1.0, _CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), "BGR"),
    "tf": (1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "RGB"),
    "torch": (1 / 255, _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB, "RGB"),
}
_CHOICES = {
    "preprocess": ("scale", *PRESETS),
    "channels": ("RGB", "BGR"),
    "layout": ("NHWC", "NCHW"),
    "resize": RESIZE_MODES,
    "output": ("softmax", "logits", "sigmoid"),
}
_KEYS = ("preprocess", "scale", "mean", "std", "channels", "layout", "input_size", "resize", "output")
#: The keys an operator changes while the model serves, not how it preprocesses: which versions serve and who gets
#: which (imageclf.models.serving_policy), which answers are kept for review (imageclf.models.review_rules) and how a
#: candidate is promoted (imageclf.models.promotion_plan).
POLICY_KEYS = ("version_policy", "traffic", "shadow", "review", "promotion")


class RepositoryError(ValueError):
    """A model in the repository cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelConfig:
    """A model's config.json with every default filled in; presets expanded into scale/mean/std/channels."""

    preprocess: str = "scale"
    scale: tuple[float, float, float] = (1 / 255, 1 / 255, 1 / 255)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: str = "RGB"
    layout: str = "NHWC"
    input_size: tuple[int, int] | None = None
    resize: str = "squash"
    output: str = "softmax"

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for GET /models and the logs."""
        return asdict(self)


def _three(path: Path, key: str, value: Any, positive: bool = False) -> tuple[float, float, float]:
    """A number or a list of 3 numbers, as 3 floats."""
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) != 3:
        raise RepositoryError(f"{path}: {key!r} must be a number or a list of 3 numbers (one per channel), "
                              f"got a list of {len(value)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            kind = "positive numbers" if positive else "numbers"
            raise RepositoryError(f"{path}: {key!r} must be {kind}, got {value!r}")
    floats = [float(v) for v in values]
    return (floats[0], floats[1], floats[2]) if len(floats) == 3 else (floats[0],) * 3


def parse_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    """Validate a config.json's content; RepositoryError names `path` and the key at fault."""
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: must hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_KEYS) - set(POLICY_KEYS))
    if unknown:
        raise RepositoryError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"known keys: {', '.join(_KEYS)}")
    for key, choices in _CHOICES.items():
        if key in raw and raw[key] not in choices:
            raise RepositoryError(f"{path}: {key!r} must be one of {', '.join(map(repr, choices))}, "
                                  f"got {raw[key]!r}")
    fields: dict[str, Any] = {k: raw[k] for k in ("preprocess", "channels", "layout", "resize", "output") if k in raw}
    preset = raw.get("preprocess", "scale")
    if preset != "scale":
        clash = sorted({"scale", "mean", "std", "channels"} & set(raw))
        if clash:
            raise RepositoryError(f"{path}: 'preprocess': {preset!r} sets scale, mean, std and channels itself; "
                                  f"remove {', '.join(map(repr, clash))} or use 'preprocess': 'scale'")
        scale, mean, std, channels = PRESETS[preset]
        fields.update(scale=(scale,) * 3, mean=tuple(mean), std=tuple(std), channels=channels)
    else:
        for key in ("scale", "mean", "std"):
            if key in raw:
                fields[key] = _three(path, key, raw[key], positive=key == "std")
    if "input_size" in raw:
        size = raw["input_size"]
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8192 for v in size)):
            raise RepositoryError(f"{path}: 'input_size' must be [height, width] in pixels (1-8192), got {size!r}")
        fields["input_size"] = (size[0], size[1])
    return ModelConfig(**fields)


def read_raw_config(model_dir: Path) -> dict[str, Any]:
    """The model's config.json as JSON ({} when the file does not exist)."""
    path = model_dir / "config.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: must hold a JSON object, got {type(raw).__name__}")
    return raw


def read_config(model_dir: Path) -> ModelConfig:
    """The model's config.json (all defaults when the file does not exist)."""
    return parse_config(read_raw_config(model_dir), model_dir / "config.json")


@contextmanager
def locked(model_dir: Path) -> Iterator[None]:
    """One change to a model's config.json at a time, across processes and threads (the control API, the
    promotion controller)."""
    with open(model_dir / ".control.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_config(model_dir: Path, raw: dict[str, Any]) -> None:
    """Replace config.json atomically: a worker polling it reads the old file or the new one, never half."""
    path = model_dir / "config.json"
    staging = model_dir / f".config.json.{os.getpid()}.tmp"
    staging.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)


def read_labels(model_dir: Path) -> list[str]:
    """Class names from labels.txt, line i being class_id i; blank lines are refused (ids would shift)."""
    path = model_dir / "labels.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing (one class name per line; line i is class_id i)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot be read ({exc})") from None
    labels = [line.strip() for line in text.rstrip("\r\n").splitlines()]
    if not labels or labels == [""]:
        raise RepositoryError(f"{path}: holds no labels")
    blank = [n for n, label in enumerate(labels, 1) if not label]
    if blank:
        raise RepositoryError(f"{path}: line {blank[0]} is blank (every line is one class name)")
    return labels


def versions(model_dir: Path) -> list[int]:
    """The version numbers present (folders named by a positive integer), ascending."""
    try:
        names = os.listdir(model_dir)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and int(n) > 0 and (model_dir / n).is_dir())


def model_file(version_dir: Path) -> tuple[Path, str]:
    """(path, format) of the one model a version folder holds."""
    found = [(version_dir / name, fmt) for name, fmt in MODEL_FILES.items() if (version_dir / name).exists()]
    if not found:
        raise RepositoryError(f"{version_dir}: holds no model (expected one of {', '.join(MODEL_FILES)})")
    if len(found) > 1:
        raise RepositoryError(f"{version_dir}: holds several models ({', '.join(p.name for p, _ in found)}); "
                              "keep one per version")
    return found[0]


def fingerprint(version_dir: Path) -> tuple:
    """Names, sizes and modification times of everything in a version folder: changes while it is being copied."""
    entries = []
    for root, _, files in os.walk(version_dir):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), version_dir), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def model_dir(repository: str, name: str) -> Path | None:
    """The model's folder in the repository, or None when the repository has no such model."""
    path = Path(repository) / name
    return path if path.is_dir() else None


def content_revision(model_dir: Path, version: int) -> str:
    """A short id of what a version computes with: its files (names, sizes, modification times), the model's
    labels and its config.json without the serving policy. Any change to them changes it, so an answer cached
    under it is never served for a new version or another preprocessing; "" when the config cannot be read."""
    try:
        config = {k: v for k, v in read_raw_config(model_dir).items() if k not in POLICY_KEYS}
        labels = (model_dir / "labels.txt").read_bytes() if (model_dir / "labels.txt").is_file() else b""
    except (RepositoryError, OSError):
        return ""
    digest = hashlib.sha256(repr(fingerprint(model_dir / str(version))).encode())
    digest.update(json.dumps(config, sort_keys=True).encode())
    digest.update(labels)
    return digest.hexdigest()[:16]


def file_revision(path: str, *parts: str) -> str:
    """The same id for a built-in model: its weights file (name, size, time) or the name of its weights, with
    `parts` (the class index); "" for random weights, which differ in every process."""
    if path == "random":
        return ""
    try:
        stat = os.stat(path)
        described = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        described = path
    return hashlib.sha256("\0".join((described, *parts)).encode()).hexdigest()[:16]
