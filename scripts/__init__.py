"""Launchers and tools: `python -m scripts.run`, `python -m scripts.start_workers`, benchmarks."""
