"""Which models this API serves (MODELS), for every blueprint that takes a model's name."""

from __future__ import annotations

from flask import current_app

from imageclf.api.errors import APIError


def served() -> list[str]:
    """The served models' names, the default first."""
    return current_app.config["MODELS"]


def known_model(model: str) -> None:
    """404 naming the served models when `model` is not one of them."""
    if model not in served():
        raise APIError(404, f"unknown model {model!r}; this service serves: {', '.join(served())} (MODELS; a new "
                            "model needs its own workers)")
