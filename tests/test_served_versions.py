"""The worker's version manager on its own (imageclf.workers.model.versions.ServedModel), with stand-in models: which
versions it loads for a policy, in which order, what a failure leaves serving, what it routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageclf.models.repository import RepositoryError
from imageclf.workers.model import versions as model_versions
from imageclf.workers.model.versions import ServedModel


class StandIn:
    """What ServedModel needs of a loaded version."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.backend = "stand-in"
        self.warm_sizes = [1]
        self.input_shape = (8, 8, 3)
        self.resize = "squash"

    def warm_up(self) -> float:
        return 0.0

    def describe(self) -> dict:
        return {"version": self.version, "input_size": [8, 8], "resize": "squash"}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(model_versions, "UNLOAD_GRACE_S", 0.0)
    monkeypatch.setattr(model_versions, "SETTLE_S", 0.0)
    for version in (1, 2, 3):
        (tmp_path / str(version)).mkdir()
        (tmp_path / str(version) / "model.keras").write_bytes(b"x")
    return tmp_path


def served(folder: Path, broken: set[int] = frozenset(), policy: dict | None = None) -> tuple[ServedModel, list]:
    if policy is not None:
        (folder / "config.json").write_text(json.dumps(policy))
    loads: list[int] = []

    def load(version: int) -> StandIn:
        loads.append(version)
        if version in broken:
            raise RepositoryError(f"{folder / str(version)}: cannot be loaded (broken)")
        return StandIn(version)

    model = ServedModel("m", load, folder, poll_s=3600)
    model.start()
    return model, loads


def test_the_default_policy_serves_the_newest_and_falls_back_when_it_fails(folder):
    model, loads = served(folder, broken={3})
    assert loads == [3, 2] and sorted(model.served) == [2] and model.current.version == 2
    assert model.status()["versions"]["3"]["state"] == "failed"
    model.stop()


def test_all_versions_load_newest_first_and_route_by_the_traffic_shares(folder):
    model, loads = served(folder, policy={"version_policy": {"all": True}, "traffic": {"default": 1, "3": 25}})
    assert loads == [3, 2, 1] and sorted(model.served) == [1, 2, 3]
    assert (model.routing.default, model.routing.shares) == (1, {1: 75.0, 3: 25.0})
    status = model.status()["versions"]
    assert (status["1"]["share"], status["3"]["share"], "share" in status["2"]) == (75.0, 25.0, False)
    model.stop()


def test_a_policy_edit_loads_what_it_adds_and_frees_what_it_drops(folder):
    model, loads = served(folder, policy={"version_policy": {"specific": [1]}})
    assert sorted(model.served) == [1]
    (folder / "config.json").write_text(json.dumps({"version_policy": {"specific": [1, 3]},
                                                    "traffic": {"default": 1, "3": 10}}))
    model._poll()
    assert sorted(model.served) == [1, 3] and model.routing.shares == {1: 90.0, 3: 10.0}
    (folder / "config.json").write_text(json.dumps({"version_policy": {"specific": [1]}}))
    model._poll()
    assert sorted(model.served) == [1] and model.status()["versions"]["3"]["state"] == "available"
    assert loads == [1, 3]
    model.stop()


def test_a_bad_edit_is_reported_and_the_last_good_policy_keeps_serving(folder):
    model, _ = served(folder, policy={"version_policy": {"all": True}})
    (folder / "config.json").write_text(json.dumps({"version_policy": {"every": True}}))
    model._poll()
    assert sorted(model.served) == [1, 2, 3] and "'version_policy' must be one of" in model.status()["policy_error"]
    model.stop()


def test_a_policy_that_serves_nothing_present_names_the_file(folder):
    with pytest.raises(RepositoryError, match="config.json: 'version_policy' .* serves none of the versions present"):
        served(folder, policy={"version_policy": {"specific": [7]}})


def test_an_unload_drops_every_version_and_a_load_brings_them_back(folder):
    unloaded: list[str | None] = [None]
    model = ServedModel("m", StandIn, folder, poll_s=3600, unloaded_by=lambda: unloaded[0])
    model.start()
    unloaded[0] = "unloaded by admin key 123"
    model._poll()
    assert model.served == {} and model.current is None
    assert {s["state"] for s in model.status()["versions"].values()} == {"unloaded"}
    unloaded[0] = None
    model._poll()
    assert sorted(model.served) == [3] and model.current.version == 3
    model.stop()
