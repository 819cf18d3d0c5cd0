"""Which class each image of a labelled dataset belongs to, in the layouts people already have.

- ImageFolder (torchvision, Keras' `image_dataset_from_directory`): `<class name>/<file>` inside a zip,
  at its root or under one folder more; the class is the file's folder.
- A `labels` CSV with columns `file,label`, naming each image by its path in the zip or its file name.

A label is a class name of the model's labels.txt or a class id (the id alone for a name that
several classes share). Everything that cannot be matched
is refused at once, naming the first few, before any image is sent to the model.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence

#: How many unmatched names a refusal lists.
SHOWN = 5


class LabelledSetError(ValueError):
    """The dataset's labels do not fit the model; the message names the first few problems."""


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _by_name(labels: Sequence[str]) -> dict[str, int]:
    """Class names to ids, leaving out names that several classes share (only their ids can say which)."""
    repeated = {name for name, n in Counter(labels).items() if n > 1}
    return {name: i for i, name in enumerate(labels) if name not in repeated}


def class_id(label: str, labels: Sequence[str], by_name: dict[str, int]) -> int | None:
    """A class name or a class id as a class id; None when it is neither (or a name several classes share)."""
    label = label.strip()
    if label in by_name:
        return by_name[label]
    return int(label) if label.isdigit() and int(label) < len(labels) else None


def folder_labels(paths: Sequence[str], labels: Sequence[str]) -> list[int]:
    """The class id of each image from its folder (`paths` are the images' paths inside their zips)."""
    by_name = _by_name(labels)
    folders = [p.replace("\\", "/").rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in p else "" for p in paths]
    loose = [p for p, folder in zip(paths, folders) if not folder]
    if loose:
        raise LabelledSetError(f"files without a label: {_few(loose)} are not in a class folder "
                               "(ImageFolder layout: <class name>/<file>), and no 'labels' CSV was sent")
    resolved = [class_id(f, labels, by_name) for f in folders]
    unknown = sorted({f for f, i in zip(folders, resolved) if i is None})
    if unknown:
        raise LabelledSetError(f"folder name(s) {_few(unknown)} match no class of the model (its labels.txt has "
                               f"{len(labels)} classes, e.g. {_few(list(labels)[:3])}); name folders by class name "
                               "or class id (the id for a name several classes share)")
    return [i for i in resolved if i is not None]  # all of them: none is unknown


def csv_labels(text: str, names: Sequence[str], labels: Sequence[str]) -> list[int]:
    """The class id of each image (`names`: its path in its zip, or its file name) from a `file,label` CSV."""
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise LabelledSetError("the 'labels' CSV needs a header with the columns file,label and one row per image")
    by_name = _by_name(labels)
    given: dict[str, str] = {}
    for row in rows:
        given[(row["file"] or "").strip().replace("\\", "/")] = row["label"] or ""
    unknown = sorted({label.strip() for label in given.values() if class_id(label, labels, by_name) is None})
    if unknown:
        raise LabelledSetError(f"label(s) {_few(unknown)} in the 'labels' CSV match no class of the model (its "
                               f"labels.txt has {len(labels)} classes, e.g. {_few(list(labels)[:3])})")
    ids, missing = [], []
    for name in names:
        path = name.replace("\\", "/")
        label = given.get(path, given.get(path.rsplit("/", 1)[-1]))
        found = class_id(label, labels, by_name) if label is not None else None
        if found is None:
            missing.append(name)
        else:
            ids.append(found)
    if missing:
        raise LabelledSetError(f"files without a label: {_few(missing)} have no row in the 'labels' CSV")
    return ids
