"""The response cache (CACHE_TTL_S) against the real service: the same upload is answered by the API without
queueing and marked cached, counted in /metrics; `?cache=false`, another `top`, a changed config.json and a new
version are computed again, never served an old entry."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import httpx
import pytest

from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from tests.user_models import colour_classifier, coloured_images, write_model

IMAGE = coloured_images(1, seed=11)[0]


@pytest.fixture(scope="module")
def svc(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, object]]:
    repo = tmp_path_factory.mktemp("cache_repository")
    write_model(repo, "plants", 1, lambda d: colour_classifier(1).save(d / "model.keras"),
                config={"version_policy": {"latest": 1}})
    service = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/11", "MODEL_REPOSITORY": str(repo), "MODELS": "plants",
        "MODEL_POLL_S": "0.5", "API_WORKERS": "1", "CACHE_TTL_S": "300",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("cache-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "cache.log").start()
    yield service, repo
    assert service.stop() == 0, service.log_tail()


def predict(svc: ServiceProcess, **params: object) -> dict:
    response = httpx.post(svc.url + "/predict", params=params, files={"image": ("leaf.png", IMAGE)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def hits(svc: ServiceProcess) -> float:
    found = re.search(r'^imageclf_cache_requests_total\{model="plants",result="hit"\} (\S+)',
                      httpx.get(svc.url + "/metrics", timeout=30).text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_same_upload_is_answered_from_the_cache_until_what_computes_it_changes(svc):
    service, repo = svc
    first = predict(service)
    assert first["cached"] is False and first["id"] and first["model_version"] == 1
    before = hits(service)
    again = predict(service)
    assert again["cached"] is True and again["id"] is None and "batch_id" not in again
    assert again["predictions"] == first["predictions"] and again["model_version"] == 1
    assert hits(service) == before + 1

    from jsonschema import Draft202012Validator

    spec = httpx.get(service.url + "/openapi.json", timeout=10).json()
    schema = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": spec["components"]})
    assert not list(validator.iter_errors(first)) and not list(validator.iter_errors(again))  # both documented

    bypassed = predict(service, cache="false")
    assert "cached" not in bypassed and bypassed["id"] and bypassed["predictions"] == first["predictions"]
    assert predict(service, top=2)["cached"] is False  # `top` is part of the key
    assert httpx.post(service.url + "/predict", params={"cache": "maybe"}, files={"image": ("a.png", IMAGE)},
                      timeout=30).status_code == 400

    config = json.loads((repo / "plants" / "config.json").read_text())
    (repo / "plants" / "config.json").write_text(json.dumps({**config, "resize": "center_crop"}))  # preprocessing
    assert wait_until(lambda: predict(service)["cached"] is False, 30, 0.5), "a changed config.json was served"
    assert predict(service)["cached"] is True  # cached again under the new revision

    shutil.copytree(repo / "plants" / "1", repo / "plants" / "2")
    answers: list[dict] = []
    assert wait_until(lambda: answers.append(predict(service)) or answers[-1]["model_version"] == 2, 120, 0.5), \
        service.log_tail()
    assert answers[-1]["cached"] is False  # version 2's first answer is computed, never version 1's
    assert predict(service)["cached"] is True and predict(service, top=3)["cached"] is False
