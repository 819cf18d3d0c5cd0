"""Name → how to build a model, its input size and its preprocessing.

Importable without TensorFlow: builders and preprocess functions are named by their
import path and resolved only inside a worker, so the API can read input sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """What the service needs to know about one servable model."""

    name: str
    #: Import path of the Keras application constructor, e.g. "keras.applications.ResNet50".
    builder: str
    #: Import path of the matching `preprocess_input`, applied inside the compiled graph.
    preprocess: str
    #: Square input side in pixels; the API resizes uploads to it.
    input_size: int = 224
    #: Extra keyword arguments for the constructor.
    builder_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, 3)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="resnet50",
            builder="keras.applications.ResNet50",
            preprocess="keras.applications.resnet50.preprocess_input",
        ),
        ModelSpec(
            name="mobilenet_v1_0.75",
            builder="keras.applications.MobileNet",
            preprocess="keras.applications.mobilenet.preprocess_input",
            builder_kwargs={"alpha": 0.75},
        ),
        ModelSpec(
            name="mobilenet_v1_1.0",
            builder="keras.applications.MobileNet",
            preprocess="keras.applications.mobilenet.preprocess_input",
            builder_kwargs={"alpha": 1.0},
        ),
        ModelSpec(
            name="mobilenet_v2",
            builder="keras.applications.MobileNetV2",
            preprocess="keras.applications.mobilenet_v2.preprocess_input",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The spec for `name`, or a ValueError listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
