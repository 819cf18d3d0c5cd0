"""A model's figures on a labelled dataset, from its predictions, gathered one image at a time.

Pure Python (no NumPy, no TensorFlow): the decoder that drives an evaluation job adds each
image's prediction as it arrives, so 20,000 images never sit in one list, and the figures
come out as JSON: top-1 and top-5 accuracy, per-class support, precision, recall and F1, the
confusion matrix over the classes that occur, the images it got wrong, and the expected
calibration error. A class with no images, or never predicted, gets None where its figure
would divide by zero. `Agreement` compares two versions on the same images, one image at a time.

Lists of images (the mistakes, the disagreements) keep their first `listed` entries beside their
full counts, so a result stays small whatever the dataset's size; the per-image CSV has them all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


@dataclass(frozen=True)
class Prediction:
    """One labelled image's answer: its true class id and the model's top classes, most probable first."""

    file: str
    label: int
    top: tuple[tuple[int, float], ...]

    @property
    def predicted(self) -> int:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


@dataclass
class Evaluation:
    """The running figures of one model version over the images added so far."""

    labels: list[str]
    listed: int | None = None  # most mistakes kept in `wrong` (None: all)
    bins: int = ECE_BINS
    images: int = 0
    top1: int = 0
    top5: int = 0
    confusion: Counter = field(default_factory=Counter)  # (true, predicted) -> images
    wrong: list[dict[str, Any]] = field(default_factory=list)
    _bin_count: list[int] = field(default_factory=list)
    _bin_confidence: list[float] = field(default_factory=list)
    _bin_correct: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._bin_count = [0] * self.bins
        self._bin_confidence = [0.0] * self.bins
        self._bin_correct = [0] * self.bins

    def add(self, prediction: Prediction) -> None:
        correct = prediction.predicted == prediction.label
        self.images += 1
        self.top1 += correct
        self.top5 += any(class_id == prediction.label for class_id, _ in prediction.top[:5])
        self.confusion[(prediction.label, prediction.predicted)] += 1
        index = min(self.bins - 1, int(prediction.probability * self.bins))  # 1.0 falls in the last bin
        self._bin_count[index] += 1
        self._bin_confidence[index] += prediction.probability
        self._bin_correct[index] += correct
        if not correct and (self.listed is None or len(self.wrong) < self.listed):
            self.wrong.append({"file": prediction.file, "true": self._name(prediction.label),
                               "predicted": self._name(prediction.predicted),
                               "probability": round(prediction.probability, 6)})

    def _name(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def expected_calibration_error(self) -> float | None:
        """Σ over the confidence bins of (bin's share of the images) × |its accuracy − its mean confidence|."""
        if not self.images:
            return None
        return sum(abs(self._bin_correct[b] - self._bin_confidence[b]) for b in range(self.bins)
                   if self._bin_count[b]) / self.images

    def per_class(self) -> dict[str, dict[str, Any]]:
        """For every class of the model: support, precision, recall and F1 (None where undefined); a name that
        several classes share gets its class id."""
        support: Counter = Counter()
        predicted: Counter = Counter()
        for (true, guess), n in self.confusion.items():
            support[true] += n
            predicted[guess] += n
        classes = {}
        repeated = {name for name, n in Counter(self.labels).items() if n > 1}  # ImageNet has two "crane"s
        for class_id, name in enumerate(self.labels):
            name = f"{name} ({class_id})" if name in repeated else name
            hits = self.confusion[(class_id, class_id)]
            precision, recall = _ratio(hits, predicted[class_id]), _ratio(hits, support[class_id])
            f1 = (2 * precision * recall / (precision + recall) if precision and recall else
                  0.0 if precision is not None and recall is not None else None)
            classes[name] = {"class_id": class_id, "support": support[class_id], "predicted": predicted[class_id],
                             "precision": precision, "recall": recall, "f1": f1}
        return classes

    def confusion_matrix(self) -> dict[str, Any]:
        """Rows: true classes, columns: predicted, over the classes that occur as either."""
        occurring = sorted({c for pair in self.confusion for c in pair})
        return {"classes": [self._name(c) for c in occurring],
                "matrix": [[self.confusion[(true, guess)] for guess in occurring] for true in occurring]}

    def result(self) -> dict[str, Any]:
        classes = self.per_class()
        return {
            "images": self.images,
            "accuracy": _ratio(self.top1, self.images),
            "top5_accuracy": _ratio(self.top5, self.images),
            "expected_calibration_error": self.expected_calibration_error(),
            "per_class": classes,
            "classes_without_images": [name for name, c in classes.items() if not c["support"]],
            "confusion": self.confusion_matrix(),
            "wrong": self.wrong,
            "wrong_count": self.images - self.top1,
        }


_GROUPS = ("first_right", "second_right", "neither_right")


@dataclass
class Agreement:
    """The running top-1 agreement of two versions over the images both answered, and the images where they
    disagree, grouped by which one was right."""

    listed: int | None = None  # most files kept per group (None: all)
    images: int = 0
    agreed: int = 0
    counts: Counter = field(default_factory=Counter)
    groups: dict[str, list[str]] = field(default_factory=lambda: {group: [] for group in _GROUPS})

    def add(self, a: Prediction, b: Prediction) -> None:
        """The same image's answers from the first version and from the second."""
        self.images += 1
        if a.predicted == b.predicted:
            self.agreed += 1
            return
        group = "first_right" if a.predicted == a.label else "second_right" if b.predicted == b.label else (
            "neither_right")
        self.counts[group] += 1
        if self.listed is None or len(self.groups[group]) < self.listed:
            self.groups[group].append(a.file)

    def result(self) -> dict[str, Any]:
        return {"images": self.images, "top1_agreement": _ratio(self.agreed, self.images),
                "disagreements": self.groups, "disagreement_counts": {g: self.counts[g] for g in _GROUPS}}


def agreement(first: dict[str, Prediction], second: dict[str, Prediction]) -> dict[str, Any]:
    """`Agreement` over the files both dicts answered, in file order."""
    compared = Agreement()
    for file in sorted(set(first) & set(second)):
        compared.add(first[file], second[file])
    return compared.result()
