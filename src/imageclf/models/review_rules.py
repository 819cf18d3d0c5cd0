"""Which answered images are worth a label: a model's `review` rules (config.json), and the perceptual hash that
keeps a burst of near-identical images to one label.

    "review": {"confidence_below": 0.5,    top-1 probability under this
               "shadow_disagrees": true,   the shadow version's top-1 class differs from the default's
               "drift": true,              the version's answers are drifting (imageclf.core.live_quality)
               "random_share": 0.5,        this percent of all answers, whatever they say (an unbiased sample)
               "max_per_day": 2000,        images kept per model and UTC day at most
               "distance": 6}              perceptual hashes this close (of 64 bits) are one image

An image may match several rules; its reasons are kept with it, in the rules' order. Pure Python and NumPy: the
model workers select, the API and the control API check a config with the same parser.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imageclf.models.repository import RepositoryError

#: The reasons an image is kept, in the order they are listed; each is the rule's key.
REASONS = ("confidence_below", "shadow_disagrees", "drift", "random_share")
_KEYS = (*REASONS, "max_per_day", "distance")


@dataclass(frozen=True)
class ReviewRules:
    confidence_below: float | None = None
    shadow_disagrees: bool = False
    drift: bool = False
    random_share: float = 0.0
    max_per_day: int = 2000
    distance: int = 6

    def reasons(self, request_id: str, confidence: float, disagrees: bool, drifting: bool) -> list[str]:
        """The rules an answer matches (`disagrees`: a shadow answer that differs; `drifting`: its version
        drifts now). The random share is a stable choice per request id, independent of the log's sampling."""
        found = []
        if self.confidence_below is not None and confidence < self.confidence_below:
            found.append("confidence_below")
        if self.shadow_disagrees and disagrees:
            found.append("shadow_disagrees")
        if self.drift and drifting:
            found.append("drift")
        if self.random_share > 0 and zlib.crc32(b"review:" + request_id.encode()) % 10_000 < self.random_share * 100:
            found.append("random_share")
        return found


def parse_review(raw: Any, path: Path) -> ReviewRules | None:
    """The `review` key of a config.json (None: no key, nothing is kept); RepositoryError names what is wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: 'review' must be an object such as {{\"confidence_below\": 0.5}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise RepositoryError(f"{path}: 'review' has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(_KEYS)}")
    fields: dict[str, Any] = {}
    if raw.get("confidence_below") is not None:
        fields["confidence_below"] = _number(path, "confidence_below", raw["confidence_below"], 0.0, 1.0)
    for key in ("shadow_disagrees", "drift"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise RepositoryError(f"{path}: 'review' {key!r} must be true or false, got {raw[key]!r}")
            fields[key] = raw[key]
    if "random_share" in raw:
        fields["random_share"] = _number(path, "random_share (a percentage)", raw["random_share"], 0.0, 100.0)
    if "max_per_day" in raw:
        fields["max_per_day"] = int(_number(path, "max_per_day", raw["max_per_day"], 0, 10**9, integer=True))
    if "distance" in raw:
        fields["distance"] = int(_number(path, "distance (bits of 64)", raw["distance"], 0, 32, integer=True))
    return ReviewRules(**fields)


def _number(path: Path, key: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise RepositoryError(f"{path}: 'review' {key} must be {kind} from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: `m @ x` transforms the columns of `x`."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: np.ndarray) -> int:
    """The 64-bit pHash of an RGB image (imagehash.phash's algorithm: greyscale, 32×32, 2-D DCT, the 8×8 lowest
    frequencies against their median), as a signed 64-bit integer for PostgreSQL's bigint."""
    grey = np.asarray(Image.fromarray(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    """Bits in which two hashes differ."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()
