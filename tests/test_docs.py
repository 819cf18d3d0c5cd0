"""The generated reference stays complete: every variable settings.py reads has a default and a description,
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
    assert not missing, f"settings.py: give each of these a #: comment above it: {missing}"


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
