"""The batch size a model worker picks for itself from its own throughput curve, unless BATCH_SIZE is set.

A GPU gets more images per second from every larger batch up to a point; a CPU is nearly
as fast per image at 8 as at 32 and answers sooner. So at start the pool process times
its model over a few batch sizes (a few seconds in all), and picks the smallest whose
images/s is within `TOLERANCE` of the best: the latency of a small batch where it costs
nothing, the throughput of a large one where it pays.

The choice is made in the pool process (it has the model) but applied by the worker's main
process (it forms the batches): they share `chosen`, a value in shared memory made when
this module is imported, before the pool forks.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable

import numpy as np

#: Sizes within this share of the best images/s count as just as fast.
TOLERANCE = 0.05
#: Each size is timed for at least this long (and at least two calls).
SECONDS_PER_SIZE = 0.3
#: Rounds over all sizes; each size keeps its best.
ROUNDS = 2

#: The size the pool process chose (0: none yet, use the configured maximum).
chosen = multiprocessing.Value("i", 0, lock=False)


def candidates(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including `max_batch`."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_batch})


def throughput_curve(predict: Callable[[np.ndarray], np.ndarray], input_shape: tuple[int, int, int],
                     max_batch: int) -> dict[int, float]:
    """Images per second of `predict` at each candidate batch size (zeros as input), best of ROUNDS.

    Each size is called once untimed first (oneDNN builds its kernels for a new shape on the first
    call, as a GPU autotunes). The worker times its curve while the rest of the service is still
    starting on the same host: the best of two rounds keeps a burst of someone else's work from
    bending the curve (measured: without it, batch 2 came out slower than batch 1).
    """
    batches = {size: np.zeros((size, *input_shape), np.uint8) for size in candidates(max_batch)}
    for batch in batches.values():
        predict(batch)
    curve: dict[int, float] = {}
    for _ in range(ROUNDS):
        for size, batch in batches.items():
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < SECONDS_PER_SIZE:
                predict(batch)
                calls += 1
            curve[size] = max(curve.get(size, 0.0), round(size * calls / (time.perf_counter() - start), 2))
    return curve


def pick(curve: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch size whose images/s is within `tolerance` of the best."""
    best = max(curve.values())
    return min(size for size, rate in curve.items() if rate >= (1 - tolerance) * best)
