"""Benchmarks: each measures one thing about the running service and writes its figures to docs/."""
