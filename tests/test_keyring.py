"""API key entries with limits, and the keys file that is re-read when it changes (imageclf.api.keyring)."""

from __future__ import annotations

import os
import time

import pytest

from imageclf.api.keyring import KeyRing, KeyringError, Limits, owner_of, parse_entry


def test_an_entry_carries_a_rate_a_burst_and_a_daily_quota():
    assert parse_entry("key1:rate=20/s:burst=40:daily=100000", "x") == ("key1", Limits(20.0, 40.0, 100000))
    assert parse_entry("k:rate=120/min", "x") == ("k", Limits(2.0, 2.0, None))  # burst: a second of rate, >= 1
    assert parse_entry("k:rate=36/h", "x") == ("k", Limits(0.01, 1.0, None))
    assert parse_entry("k:daily=5", "x") == ("k", Limits(None, None, 5))
    assert parse_entry("plain", "x") == ("plain", Limits())


@pytest.mark.parametrize("entry", ["secret-k:rate=fast", "k:rate=5/day", "k:burst=3", "k:rate=0/s", "k:daily=0",
                                   "k:colour=red", "k:rate=1/s:rate=2/s", ":rate=1/s", "k:daily"])
def test_a_bad_entry_is_refused_naming_where_but_never_the_key(entry):
    with pytest.raises(KeyringError) as err:
        parse_entry(entry, "API_KEYS entry 3")
    assert str(err.value).startswith("API_KEYS entry 3") and entry not in str(err.value)


def test_the_keys_file_is_re_read_when_it_changes_and_a_broken_one_keeps_the_old_keys(tmp_path, monkeypatch):
    monkeypatch.setattr("imageclf.api.keyring._RECHECK_S", 0.0)
    path = tmp_path / "keys.txt"
    path.write_text("# clients\nalpha:rate=5/s\n\nbeta   # no limits\n")
    ring = KeyRing(["fixed:daily=10"], str(path))
    assert ring.lookup("alpha") == (owner_of("alpha"), Limits(5.0, 5.0, None))
    assert ring.lookup("beta")[1] == Limits() and ring.lookup("fixed")[1] == Limits(None, None, 10)
    assert ring.lookup("gamma") is None and ring.lookup(None) is None

    path.write_text("gamma:daily=3\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new modification time, whatever the clock's grain
    assert ring.lookup("gamma")[1] == Limits(None, None, 3) and ring.lookup("alpha") is None
    assert ring.lookup("fixed") is not None  # API_KEYS stay whatever the file says

    path.write_text("gamma:rate=banana\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert ring.lookup("gamma")[1] == Limits(None, None, 3)  # the broken edit is not applied
    assert KeyRing([], "").enabled is False and KeyRing([], str(tmp_path / "none.txt")).enabled is True


def test_a_refused_key_is_refused_again_here_without_redis_until_a_token_can_be_there(redis_url):
    import redis

    from imageclf.api import quotas

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/15")
    client.flushdb()
    limits, owner = Limits(rate=5.0, burst=2.0), "key-refused-locally"

    def evals() -> int:
        return int(client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))

    assert quotas.charge(client, owner, limits, 1).admitted and quotas.charge(client, owner, limits, 1).admitted
    refused = quotas.charge(client, owner, limits, 1)
    assert not refused.admitted and 0 < refused.retry_after_s <= 0.2
    before = evals()
    again = [quotas.charge(client, owner, limits, 1) for _ in range(20)]  # within the same 0.2 s
    assert not any(d.admitted for d in again) and evals() == before  # refused here, Redis not asked
    assert all(0 < d.retry_after_s <= refused.retry_after_s for d in again)
    time.sleep(refused.retry_after_s + 0.01)
    assert quotas.charge(client, owner, limits, 1).admitted and evals() == before + 1  # a token was there again
    assert owner not in quotas._refused

    daily = Limits(daily=3)
    assert quotas.charge(client, "key-daily", daily, 3).admitted
    assert not quotas.charge(client, "key-daily", daily, 1).admitted
    before = evals()
    assert quotas.charge(client, "key-daily", daily, 1).why == "daily" and evals() == before
    client.flushdb()
