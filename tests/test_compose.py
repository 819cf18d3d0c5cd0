"""docker-compose.yml: valid Compose, and shaped as operators need it (no docker on this machine)."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from tests.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def test_the_file_validates_against_the_compose_specification():
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_services_healthchecks_profiles_and_secrets():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"redis", "api", "grpc", "worker-cpu", "worker-gpu0", "decoder", "flower"} <= set(services)
    for name, service in services.items():
        assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"

    redis = services["redis"]
    major, minor = map(int, re.match(r"redis:(\d+)\.(\d+)", redis["image"]).groups())
    assert (major, minor) >= (6, 2)
    assert "noeviction" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])

    api = " ".join(services["api"]["command"])
    assert "gunicorn" in api and "API_WORKERS" in api and "API_THREADS" in api
    # The Open Inference Protocol's gRPC service on its default port.
    assert services["grpc"]["command"] == ["python", "-m", "imageclf.api.grpc_server"]
    assert services["grpc"]["environment"]["GRPC_PORT"] == "8001" and services["grpc"]["ports"][0].endswith(":8001")
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["worker-gpu0"]["profiles"] == ["gpu"]
    [device] = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
    assert services["worker-gpu0"]["build"]["args"]["TF_PACKAGE"].startswith("tensorflow[and-cuda]")
    for worker in ("worker-cpu", "worker-gpu0"):
        assert "interactive.$${MODEL},bulk.$${MODEL}" in " ".join(services[worker]["command"])

    # Flower: basic auth from the environment, required, no default password; published on localhost only.
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "--basic-auth" in " ".join(flower["command"])
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
    # Uploads are shared by the API and the decoders.
    assert any(v.startswith("uploads:") for v in services["api"]["volumes"])
    assert any(v.startswith("uploads:") for v in services["decoder"]["volumes"])
    assert "./model_repository:/model_repository:ro" in services["worker-cpu"]["volumes"]


def test_the_api_image_has_no_tensorflow():
    dockerfile = (ROOT / "docker" / "api.Dockerfile").read_text()
    installed = re.findall(r"-r (\S+)", dockerfile)
    assert installed == ["/tmp/requirements/api.txt", "/tmp/requirements/client.txt"]
    lines = (ROOT / "requirements" / "api.txt").read_text().lower().splitlines()
    packages = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert not any(p.startswith(("tensorflow", "keras", "-r")) for p in packages), packages
    for image in ("api", "worker"):  # both install the project's wheel, nothing else of the checkout
        text = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
        assert "pip wheel --no-cache-dir --no-deps -w /wheels ." in text
        assert "pip install --no-cache-dir --no-deps /wheels/imageclf-*.whl" in text
    compose = yaml.safe_load(COMPOSE.read_text())
    for name in ("api", "flower", "decoder"):
        assert compose["services"][name]["build"]["dockerfile"] == "docker/api.Dockerfile"
