"""The package as a user gets it: the wheel built from this checkout, installed in a clean virtual environment
with its own dependencies only (the client: httpx and tqdm), and the `imageclf` command it brings."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from imageclf import __version__
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv holding the wheel (client-only: no extras)."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("imageclf-*.whl")
    assert wheel.name.startswith(f"imageclf-{__version__}-")
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return bin_dir


def command(bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    # Run away from the checkout, so that only what the wheel installed can be imported.
    return subprocess.run([str(bin_dir / "imageclf"), *args], capture_output=True, text=True, timeout=60,
                          cwd=bin_dir, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_the_wheel_installs_the_client_alone(installed):
    listed = subprocess.run([str(installed / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, timeout=60).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert {"imageclf", "httpx", "tqdm"} <= names
    assert not names & {"flask", "celery", "tensorflow-cpu", "redis", "pillow", "numpy"}, names


def test_every_command_has_help_and_the_environment_it_reads(installed):
    top = command(installed, "--help")
    assert top.returncode == 0, top.stderr
    for name in ("run", "worker", "add-model", "classify", "evaluate", "benchmark", "version"):
        assert name in top.stdout
    add_model = command(installed, "add-model", "--help")
    assert add_model.returncode == 0, add_model.stderr
    assert "--labels" in add_model.stdout and "MODEL_REPOSITORY" in add_model.stdout
    run = command(installed, "run", "--help")
    assert run.returncode == 0 and "REDIS_URL" in run.stdout and "BATCH_SIZE [default: 32]" in run.stdout
    assert "IMAGECLF_URL" in command(installed, "classify", "--help").stdout
    assert command(installed, "version").stdout.strip() == f"imageclf {__version__}"


def test_a_service_command_without_the_service_packages_says_what_to_install(installed):
    done = command(installed, "run")
    assert done.returncode == 2 and "pip install 'imageclf[worker]'" in done.stderr, done.stderr
