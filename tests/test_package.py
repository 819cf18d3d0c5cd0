"""The package as a user gets it: the wheel built from this checkout, with one top-level name, installed in a
clean virtual environment with its own dependencies only (the client: httpx and tqdm), and the `imageclf` command
it brings; and the service, installed from the wheel, run from a project that has its own `models/`, `tasks.py`,
`api/`, `settings.py` and `client.py`."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from imageclf import __version__
from imageclf.launch.service_process import ServiceProcess
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, ROOT, SHARED


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (found,) = dist.glob("imageclf-*.whl")
    assert found.name.startswith(f"imageclf-{__version__}-")
    return found


def fresh_venv(where: Path, wheel: Path) -> Path:
    """The bin folder of a new venv holding `wheel` (and its own dependencies: the client's)."""
    venv.create(where, with_pip=True)
    bin_dir = where / "bin"
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return bin_dir


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv holding the wheel (client-only: no extras)."""
    return fresh_venv(tmp_path_factory.mktemp("client") / "venv", wheel)


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


def test_the_wheel_installs_one_top_level_name(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        names = archive.namelist()
    assert top == {"imageclf", f"imageclf-{__version__}.dist-info"}, top
    # What the service needs at run time travels in it: the web page, its script, the config Celery reads.
    assert {"imageclf/api/templates/index.html", "imageclf/api/static/app.js",
            "imageclf/core/celeryconfig.py", "imageclf/settings.py"} <= set(names)


#: A user's project, on sys.path, with the names the service's modules had before they moved under imageclf/.
USER_PROJECT = {"models/__init__.py": "OWNER = 'user'\n", "tasks.py": "OWNER = 'user'\n",
                "api/__init__.py": "OWNER = 'user'\n", "settings.py": "OWNER = 'user'\n",
                "client.py": "OWNER = 'user'\n", "celeryconfig.py": "OWNER = 'user'\n"}


def test_the_service_installed_from_the_wheel_runs_beside_a_users_own_modules(wheel: Path, tmp_path: Path):
    # The service's dependencies come from this environment (read as a plain folder, so its editable install of
    # this checkout is not seen): the service's own code is the wheel's.
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(bin_dir / "python"), "-c", where], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    for name, text in USER_PROJECT.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(project), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)

    helped = subprocess.run([str(bin_dir / "imageclf"), "add-model", "--help"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "MODEL_REPOSITORY" in helped.stdout, helped.stderr
    both = ("import models, tasks, api, settings, client, celeryconfig\n"
            "assert {m.OWNER for m in (models, tasks, api, settings, client, celeryconfig)} == {'user'}\n"
            "from imageclf.api import create_app\n"
            "import imageclf\n"
            "create_app()\n"
            "print(imageclf.__file__)\n")
    done = subprocess.run([str(bin_dir / "python"), "-c", both], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(site)), done.stdout  # the wheel's, not this checkout's

    service = ServiceProcess({"PYTHONPATH": str(project), "PATH": env["PATH"], "REDIS_URL": "", "MODEL":
                              "mobilenet_v1_0.75", "MODEL_WEIGHTS": str(MOBILENET_FILE),
                              "CLASS_INDEX": str(CLASS_INDEX), "API_WORKERS": "1", "DECODER_CONCURRENCY": "1",
                              "REDIS_DATA_DIR": str(tmp_path / "redis"), "UPLOAD_DIR": str(tmp_path / "uploads")},
                             tmp_path / "service.log", command=[str(bin_dir / "imageclf"), "run"], cwd=project)
    service.start()
    try:
        photo = SHARED / "images" / "cat_720p.jpg"
        answer = httpx.post(service.url + "/predict", files={"image": (photo.name, photo.read_bytes())}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"], answer.json()
    finally:
        assert service.stop() == 0, service.log_tail()
