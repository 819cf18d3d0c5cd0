"""A confusion matrix as a PNG heatmap (matplotlib, no display), readable up to 50 classes.

Past `MAX_CLASSES`, the classes with the most images (true or predicted) keep their own row and
column and the rest are added up as "other", so a 1,000-class model still gives a picture a
person can read.
"""

from __future__ import annotations

import io
from typing import Any

#: Most rows and columns drawn; the rest are added up into "other".
MAX_CLASSES = 50


def aggregate(classes: list[str], matrix: list[list[int]], limit: int = MAX_CLASSES
              ) -> tuple[list[str], list[list[int]]]:
    """At most `limit` classes: the busiest `limit - 1` and "other" holding the rest, counts kept."""
    if len(classes) <= limit:
        return classes, matrix
    weight = [sum(matrix[i]) + sum(row[i] for row in matrix) for i in range(len(classes))]
    kept = sorted(sorted(range(len(classes)), key=lambda i: -weight[i])[:limit - 1])
    slot = {old: new for new, old in enumerate(kept)}
    other = len(kept)
    out = [[0] * (other + 1) for _ in range(other + 1)]
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            out[slot.get(i, other)][slot.get(j, other)] += n
    return [classes[i] for i in kept] + ["other"], out


def confusion_png(confusion: dict[str, Any], title: str) -> bytes:
    """The heatmap of {"classes", "matrix"} (rows: true class, columns: predicted), class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, matrix = aggregate(confusion["classes"], confusion["matrix"])
    n = max(1, len(classes))
    size = min(16.0, 3.0 + 0.28 * n)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    try:
        image = axes.imshow(matrix if matrix else [[0]], cmap="Blues", interpolation="nearest")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="images")
        axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=max(5, 11 - n // 8))
        axes.set_yticks(range(len(classes)), classes, fontsize=max(5, 11 - n // 8))
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(title)
        if n <= 20:  # the counts themselves, where they fit
            peak = max((max(row) for row in matrix), default=0)
            for i, row in enumerate(matrix):
                for j, count in enumerate(row):
                    if count:
                        axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                                  color="white" if count > peak / 2 else "black")
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png", dpi=100)
        return out.getvalue()
    finally:
        plt.close(figure)
