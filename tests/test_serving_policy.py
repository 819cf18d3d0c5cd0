"""The serving policy on its own: parsing config.json's keys, which versions serve, how requests split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from imageclf.models.repository import RepositoryError, parse_config
from imageclf.models.serving_policy import ServingPolicy, Shadow, Splitter, check_against, parse_policy

HERE = Path("config.json")


def test_defaults_serve_the_latest_version_alone():
    policy = parse_policy({}, HERE)
    assert policy == ServingPolicy() and policy.select([1, 2, 5]) == [5]
    assert policy.describe() == {"version_policy": {"latest": 1}, "traffic": {}, "shadow": None}


@pytest.mark.parametrize("raw,present,served", [
    ({"latest": 2}, [1, 2, 3], [2, 3]),
    ({"latest": 5}, [1, 2], [1, 2]),
    ({"specific": [3, 1]}, [1, 2, 3], [1, 3]),
    ({"specific": [4]}, [1, 2], []),
    ({"all": True}, [3, 1, 2], [1, 2, 3]),
])
def test_version_policies_choose_as_tritons_do(raw, present, served):
    assert parse_policy({"version_policy": raw}, HERE).select(present) == served


@pytest.mark.parametrize("raw,message", [
    ({"version_policy": {"newest": 1}}, "'version_policy' must be one of"),
    ({"version_policy": {"latest": 0}}, "latest must be a version number"),
    ({"version_policy": {"specific": []}}, "non-empty list"),
    ({"version_policy": {"all": 1}}, "all must be true"),
    ({"traffic": {"two": 10}}, "a 'traffic' key must be a version number"),
    ({"traffic": {"2": 101}}, "percentage from 0 to 100"),
    ({"traffic": {"2": 60, "3": 50}}, "add up to 110%"),
    ({"traffic": [2, 10]}, "'traffic' must be an object"),
    ({"shadow": {"version": 3, "share": -1}}, "percentage"),
    ({"shadow": {"share": 5}}, "'shadow' must be"),
])
def test_bad_policies_name_the_file_and_the_key(raw, message):
    with pytest.raises(RepositoryError, match=message) as error:
        parse_policy(raw, HERE)
    assert str(error.value).startswith("config.json: ")


def test_policy_keys_live_beside_the_preprocessing_keys():
    raw = {"preprocess": "torch", "version_policy": {"all": True}, "traffic": {"2": 5}, "shadow": {"version": 1}}
    assert parse_config(raw, HERE).preprocess == "torch"
    assert parse_policy(raw, HERE).shadow == Shadow(1, 100.0)


def test_routing_sends_a_versions_share_to_the_default_when_it_is_not_ready():
    policy = parse_policy({"version_policy": {"all": True}, "traffic": {"default": 1, "2": 10, "3": 20},
                           "shadow": {"version": 3, "share": 50}}, HERE)
    routing = policy.routing([1, 2, 3])
    assert (routing.default, routing.shares, routing.shadow, routing.notes) == (
        1, {1: 70.0, 2: 10.0, 3: 20.0}, Shadow(3, 50.0), [])
    degraded = policy.routing([1, 2])
    assert degraded.shares == {1: 90.0, 2: 10.0} and degraded.shadow is None
    assert degraded.notes == ["version 3 is not ready: its 20% go to version 1", "shadow version 3 is not ready: "
                              "no shadow traffic"]
    fallback = policy.routing([2, 3])
    assert fallback.default == 3 and "default version 1 is not ready" in fallback.notes[0]
    assert fallback.shares == {2: 10.0, 3: 90.0}


def test_a_policy_that_names_a_version_it_does_not_serve_is_refused():
    check_against(parse_policy({"version_policy": {"all": True}, "traffic": {"2": 10}}, HERE), [1, 2], HERE)
    with pytest.raises(RepositoryError, match="names version.s. 3, which are not in the repository"):
        check_against(parse_policy({"traffic": {"3": 10}}, HERE), [1, 2], HERE)
    with pytest.raises(RepositoryError, match="names version.s. 1, which it does not serve; served: 2"):
        check_against(parse_policy({"shadow": {"version": 1, "share": 10}}, HERE), [1, 2], HERE)
    with pytest.raises(RepositoryError, match="serves none of the versions present"):
        check_against(parse_policy({"version_policy": {"specific": [7]}}, HERE), [1, 2], HERE)


@pytest.mark.parametrize("shares", [{1: 90.0, 2: 10.0}, {1: 33.0, 2: 33.0, 3: 34.0}, {1: 99.0, 2: 1.0}])
def test_the_split_holds_closely_over_any_run_of_requests(shares):
    """Far closer than random draws (whose spread over 2,000 requests is about sqrt(2000 p (1-p)))."""
    splitter = Splitter()
    for n in (100, 2000):
        counts = Counter(splitter.pick(shares) for _ in range(n))
        for version, share in shares.items():
            assert abs(counts[version] - n * share / 100) <= 3, (n, counts)
