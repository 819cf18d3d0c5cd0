"""Add a trained classifier to the model repository as its next version, after checking that it works.

    imageclf add-model disease_224.h5 --name plants --labels labels.txt --sample leaf.jpg
    imageclf add-model resnet.onnx --name parts --labels classes.txt --preprocess torch \\
        --layout NCHW --output logits --resize center_crop

PATH is a `.keras`, a legacy `.h5`, a SavedModel folder, or an `.onnx` file. The model,
its labels and its config.json are first put together in a staging folder and loaded
there through the worker's own loader (label count against output width, input size,
one prediction); only then do they enter MODEL_REPOSITORY/<name>/, the version folder
last and by one rename, so a running service never sees half a model. It picks the new
version up within MODEL_POLL_S. config.json and labels.txt belong to the model, not to
a version: options given here replace them for the versions loaded from now on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter would bury the answer

from imageclf import settings  # noqa: E402
from imageclf.models.images import decode_to_pixels  # noqa: E402
from imageclf.models.repository import MODEL_FILES, RepositoryError, parse_config, read_labels, versions  # noqa: E402

#: format → the name it has in a version folder
_DESTINATION = {fmt: name for name, fmt in MODEL_FILES.items()}


def model_format(path: Path) -> str:
    """The format of a model the user points at, or RepositoryError."""
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise RepositoryError(f"{path}: a folder, but not a SavedModel (no saved_model.pb inside)")
    formats = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx"}
    if path.suffix.lower() not in formats:
        raise RepositoryError(f"{path}: not a model file this service loads ({', '.join(MODEL_FILES)})")
    return formats[path.suffix.lower()]


def _numbers(text: str) -> float | list[float]:
    values = [float(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def config_from(args: argparse.Namespace) -> dict:
    """The config.json keys the options set (only those given)."""
    config: dict = {}
    for key in ("preprocess", "channels", "layout", "resize", "output"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    for key in ("scale", "mean", "std"):
        if getattr(args, key) is not None:
            config[key] = _numbers(getattr(args, key))
    if args.input_size:
        config["input_size"] = [int(v) for v in args.input_size.lower().replace("x", ",").split(",")]
    return config


def add(source: Path, name: str, repository: Path, labels: Path | None, config: dict,
        sample: Path | None) -> tuple[int, list[dict]]:
    """Stage, check and install the model; returns (version, top-5 for the sample image)."""
    fmt = model_format(source)
    model_dir = repository / name
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".adding-{name}-", dir=repository))
    try:
        if labels is not None:
            shutil.copyfile(labels, staging / "labels.txt")
        elif (model_dir / "labels.txt").exists():
            shutil.copyfile(model_dir / "labels.txt", staging / "labels.txt")
        else:
            raise RepositoryError(f"{model_dir / 'labels.txt'}: missing; give the class names with --labels FILE")
        read_labels(staging)
        existing = model_dir / "config.json"
        if config:
            parse_config(config, Path("the options"))
            (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        elif existing.exists():
            shutil.copyfile(existing, staging / "config.json")
        version_dir = staging / "1"
        version_dir.mkdir()
        copy = shutil.copytree if fmt == "savedmodel" else shutil.copyfile
        copy(source, version_dir / _DESTINATION[fmt])
        try:
            predictions = _check(name, staging, sample)
        except RepositoryError as exc:  # name the user's files, not the staging copies
            message = str(exc).replace(str(version_dir / _DESTINATION[fmt]), str(source))
            message = message.replace(str(staging / "labels.txt"), str(labels or model_dir / "labels.txt"))
            raise RepositoryError(message.replace(str(staging), str(model_dir))) from None
        model_dir.mkdir(exist_ok=True)
        for meta in ("labels.txt", "config.json"):
            if (staging / meta).exists():
                os.replace(staging / meta, model_dir / meta)
        version = max(versions(model_dir), default=0) + 1
        os.rename(version_dir, model_dir / str(version))
        return version, predictions
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check(name: str, staging: Path, sample: Path | None) -> list[dict]:
    """Load the staged model as a worker would and classify the sample (a grey image when none is given)."""
    import numpy as np

    from imageclf.models.repository_loader import load_version

    classifier = load_version(name, staging, 1, max_batch=1, pad=False)
    height, width, _ = classifier.input_shape
    if sample is not None:
        pixels = decode_to_pixels(sample.read_bytes(), (height, width), settings.MAX_IMAGE_PIXELS, classifier.resize)
        image = np.frombuffer(pixels, np.uint8).reshape(height, width, 3)
    else:
        image = np.full((height, width, 3), 128, np.uint8)
    return classifier.top(classifier.predict(image[None])[0], 5)


def add_from_arguments(args: argparse.Namespace) -> int:
    """Check and add the model `args` name (imageclf add-model's options, imageclf.cli); the exit status:
    0 added, 1 the model does not work, 2 a usage error."""
    if not args.name.replace("_", "").replace("-", "").replace(".", "").isalnum() or args.name.startswith("."):
        print(f"error: --name {args.name!r}: use letters, digits, '_', '-' and '.'", file=sys.stderr)
        return 2
    for path in (args.path, args.labels, args.sample):
        if path is not None and not path.exists():
            print(f"error: {path}: no such file or folder", file=sys.stderr)
            return 2
    try:
        config = config_from(args)
        version, predictions = add(args.path, args.name, args.repository, args.labels, config, args.sample)
    except (RepositoryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = args.repository / args.name / str(version)
    print(f"added {args.name} version {version} at {where}")
    print(f"top-5 for {args.sample or 'a grey image'}:")
    for p in predictions:
        print(f"  {p['probability']:.4f}  {p['class_id']:4d}  {p['label']}")
    print(f"serve it: MODELS={args.name} make run   (a running service picks it up within MODEL_POLL_S)")
    return 0

