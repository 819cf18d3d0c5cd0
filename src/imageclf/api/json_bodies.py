"""JSON request bodies, parsed only once their nesting is known to be bounded.

Python's parser recurses once per level: a body nested 20,000 levels deep raises RecursionError
(a 500) after using the thread's stack. The depth is measured first, without parsing and in
linear time (NumPy over the bytes, a few milliseconds a megabyte): brackets inside strings do not
count, and a quote is a string's edge unless an odd number of backslashes comes before it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from imageclf import settings
from imageclf.api.errors import APIError

_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in `data` (brackets in strings do not count)."""
    raw = np.frombuffer(data, np.uint8)
    if not raw.size:
        return 0
    edge = raw == ord('"')
    if b"\\" in data:
        positions = np.arange(raw.size, dtype=np.int32 if raw.size < 2**31 else np.int64)
        # backslashes right before each position: its index minus that of the last other byte before it
        last_other = np.maximum.accumulate(np.where(raw == ord("\\"), -1, positions))
        before = positions - 1 - np.concatenate(([-1], last_other[:-1]))
        edge &= before % 2 == 0
    outside = np.cumsum(edge) % 2 == 0  # an even number of string edges so far
    return int(np.cumsum(_STEP[raw] * outside, dtype=np.int64).max(initial=0))


def parse_json(data: bytes, what: str) -> Any:
    """`data` parsed as JSON; 400 naming `what` when it is not JSON or nests deeper than MAX_JSON_DEPTH."""
    opening = data.count(b"[") + data.count(b"{")
    depth = nesting_depth(data) if opening > settings.MAX_JSON_DEPTH else opening
    if depth > settings.MAX_JSON_DEPTH:
        raise APIError(400, f"{what} nests {depth} levels deep; at most {settings.MAX_JSON_DEPTH} are accepted "
                            "(MAX_JSON_DEPTH)")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"{what} is not valid JSON ({exc})") from None
