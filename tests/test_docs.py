"""The generated reference stays complete: every variable imageclf/settings.py reads has a default and a description,
and the documentation site builds with every link resolving (`make test` builds it with --strict too)."""

from __future__ import annotations

import os
import subprocess
import sys

from imageclf.settings_reference import settings_reference
from tests.helpers import ROOT


def test_every_setting_has_a_description():
    settings = settings_reference()
    assert len(settings) > 50
    missing = [s.name for s in settings if len(s.description) < 10]
    assert not missing, f"imageclf/settings.py: give each of these a #: comment above it: {missing}"


def test_a_setting_without_a_comment_is_found():
    found = settings_reference('import os\n#: Said.\nA: int = _int("A", 1)\nB: str = _str("B", "x")\n')
    assert [(s.name, s.default, s.description) for s in found] == [("A", "1", "Said."), ("B", "x", "")]


def test_the_site_builds_strictly_with_the_generated_pages(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    configuration = (tmp_path / "reference" / "configuration" / "index.html").read_text()
    assert "WEBHOOK_MAX_ATTEMPTS" in configuration and "OTEL_EXPORTER_OTLP_ENDPOINT" in configuration
    assert "imageclf_queue_depth" in (tmp_path / "reference" / "metrics" / "index.html").read_text()
    assert "/result/{id}" in (tmp_path / "reference" / "http" / "index.html").read_text()


def test_the_tutorials_training_script_makes_a_model_add_model_accepts(tmp_path):
    """docs/own-model.md's steps 1 and 2, as written (one epoch: what is checked is that they work)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    trained = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "train_colours.py"), "--epochs", "1"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert {"colours.keras", "labels.txt", "sample.png", "held_out.zip"} <= {p.name for p in tmp_path.iterdir()}
    added = subprocess.run([sys.executable, "-m", "imageclf", "add-model", "colours.keras", "--name", "colours",
                            "--labels", "labels.txt", "--sample", "sample.png", "--repository", "repo"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert added.returncode == 0 and "added colours version 1" in added.stdout, added.stderr[-3000:]
    assert (tmp_path / "repo" / "colours" / "1" / "model.keras").exists()
    assert (tmp_path / "repo" / "colours" / "labels.txt").read_text().split() == ["red", "green", "blue"]


def test_the_changelog_names_the_version_the_package_has():
    import re

    from imageclf import __version__

    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == __version__, (releases, __version__)
    from imageclf.api.v2 import SERVER_VERSION  # what the Open Inference Protocol's server metadata says

    assert SERVER_VERSION == __version__
