"""A per-process budget of memory for decoded images, so that what arrives cannot decide how much RAM we use.

A 62-megapixel PNG of one colour is a 200 KB upload and 250 MB once Pillow has decoded it
(4 bytes a pixel). Decoded concurrently by 32 request threads, such files took an API
process to 11 GB (measured). Each decode first takes its image's decoded size from this
budget, waits while the budget is spent, and gives it back when done: a process never
holds more than the budget in decoded pixels, and small images are not held up by a big
one while there is room. An image larger than the whole budget is decoded alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class DecodeBusy(Exception):
    """The budget stayed spent for the whole wait: the caller should be told to retry."""


class DecodeBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, cost: int, timeout_s: float | None = None) -> Iterator[None]:
        """Hold `cost` bytes of the budget for the block; DecodeBusy after `timeout_s` without room."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._room:
            while self.used and self.used + cost > self.limit:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DecodeBusy(f"busy decoding other large images ({self.used / 2**20:.0f} MB of the "
                                     f"{self.limit / 2**20:.0f} MB decode budget in use); retry shortly")
                self._room.wait(left)
            self.used += cost
        try:
            yield
        finally:
            with self._room:
                self.used -= cost
                self._room.notify_all()
