"""How every benchmark hands its figures over: the table printed, and with --out the raw JSON and the table as
Markdown beside it (benchmarks/results/benchmark-*.json and .md, which the docs/benchmarks/ pages explain)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def publish(report: dict[str, Any], out: Path | None, markdown: Callable[[dict[str, Any]], str]) -> None:
    if out:
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
