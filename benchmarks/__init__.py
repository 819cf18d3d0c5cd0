"""Benchmarks: each measures one thing about the running service and writes its figures beside it."""

from pathlib import Path

#: The checkout the benchmarks run from (its var/ for scratch files, ../shared for the assets).
ROOT = Path(__file__).resolve().parent.parent
