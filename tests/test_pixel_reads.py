"""The model's pixel reads (imageclf.core.pixel_reads) against a real Redis: the same values as redis-py's MGET, in both
protocols, and a connection that stays usable after an error reply or a connection killed under it."""

from __future__ import annotations

import os

import pytest
import redis

from imageclf.core.pixel_reads import mget_into
from imageclf.core.redis_clients import connect


@pytest.mark.parametrize("protocol", [2, 3])
def test_values_are_those_mget_reads(redis_url: str, protocol: int) -> None:
    client = connect(redis_url, protocol=protocol)
    values = {"px:empty": b"", "px:small": b"\r\n$3\r\n*1", "px:part": os.urandom(32 * 224 * 224 * 3),
              "px:image": os.urandom(224 * 224 * 3)}
    client.mset(values)
    keys = ["px:part", "px:missing", "px:empty", "px:small", "px:image", "px:part"]
    got = mget_into(client, keys)
    assert got == client.mget(keys)
    assert [None if v is None else bytes(v) for v in got] == [values.get(k) for k in keys]
    assert client.get("px:small") == values["px:small"]  # the connection reads its next reply from the start


def test_an_error_reply_leaves_the_connection_usable(redis_url: str) -> None:
    client = connect(redis_url)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        mget_into(client, [])
    client.set("px:after-error", b"kept")
    assert mget_into(client, ["px:after-error"]) == [bytearray(b"kept")]


def test_a_connection_killed_under_it_is_replaced(redis_url: str) -> None:
    client, other = connect(redis_url), redis.Redis.from_url(redis_url)
    client.set("px:after-kill", b"kept")
    client.client_setname("pixel-reader")
    assert mget_into(client, ["px:after-kill"]) == [bytearray(b"kept")]
    killed = [c["id"] for c in other.client_list() if c.get("name") == "pixel-reader"]
    assert killed and other.client_kill_filter(_id=killed[0]) == 1
    assert mget_into(client, ["px:after-kill"]) == [bytearray(b"kept")]  # retried on a new connection
