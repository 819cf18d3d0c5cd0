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
#: Rounds over all sizes: at least two, more until two in a row pick the same size, at most this many.
MAX_ROUNDS = 6

#: The size the pool process chose (0: none yet, use the configured maximum).
chosen = multiprocessing.Value("i", 0, lock=False)

Measure = Callable[[Callable[[np.ndarray], np.ndarray], np.ndarray], float]


def candidates(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including `max_batch`."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_batch})


def images_per_s(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    """`predict(batch)` timed for SECONDS_PER_SIZE (and at least two calls), in images per second."""
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < SECONDS_PER_SIZE:
        predict(batch)
        calls += 1
    return round(len(batch) * calls / (time.perf_counter() - start), 2)


def throughput_curve(predict: Callable[[np.ndarray], np.ndarray], input_shape: tuple[int, int, int],
                     max_batch: int, measure: Measure = images_per_s,
                     on_change: Callable[[int, int, int], None] | None = None) -> tuple[dict[int, float], int]:
    """(images per second of `predict` at each candidate batch size, from the round the pick rests on;
    rounds run).

    Each size is called once untimed first (oneDNN builds its kernels for a new shape on the first
    call, as a GPU autotunes). The worker times its curve while the rest of the service may still be
    starting, or other work may share its cores: a burst of it bends a round's curve (measured: the
    same worker picked 4 under contention and 8 on a quiet machine, and 1 once when a lucky quiet
    moment favoured the shortest calls). So rounds are timed until two in a row, each on its own
    figures, pick the same size; `on_change(round, before, now)` hears each time the pick moved.
    After MAX_ROUNDS without two agreeing, the size picked most often wins (the latest on a tie).
    """
    batches = {size: np.zeros((size, *input_shape), np.uint8) for size in candidates(max_batch)}
    for batch in batches.values():
        predict(batch)
    curves: list[dict[int, float]] = []
    picked: list[int] = []
    for round_ in range(1, MAX_ROUNDS + 1):
        curves.append({size: measure(predict, batch) for size, batch in batches.items()})
        picked.append(pick(curves[-1]))
        if len(picked) >= 2 and picked[-1] != picked[-2] and on_change is not None:
            on_change(round_, picked[-2], picked[-1])
        if len(picked) >= 2 and picked[-1] == picked[-2]:
            return curves[-1], len(picked)
    winner = max(reversed(range(len(picked))), key=lambda i: picked.count(picked[i]))
    return curves[winner], len(picked)


def pick(curve: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch size whose images/s is within `tolerance` of the best."""
    best = max(curve.values())
    return min(size for size, rate in curve.items() if rate >= (1 - tolerance) * best)
