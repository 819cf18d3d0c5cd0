"""Paths to the shared assets and reading their manifest."""

from __future__ import annotations

import csv

from scripts.service_process import ROOT

SHARED = ROOT.parent / "shared" / "assets"
MOBILENET_FILE = SHARED / "models" / "mobilenet_v1_0.75_224_imagenet.keras"
CLASS_INDEX = SHARED / "imagenet_class_index.json"


def labelled_photos() -> list[dict]:
    """MANIFEST rows of photos with an unambiguous expected class."""
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    photos = [r for r in rows if r["kind"] == "image" and r["expected_class_id"]]
    assert photos, "MANIFEST.tsv lists no labelled photos"
    return photos
