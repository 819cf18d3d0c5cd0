"""One promotion controller acts for a model at a time (imageclf.core.promotion), on a real Redis: the lock is
per model, kept by its holder's checks, and taken over once the holder stops renewing it (a dead process)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from imageclf import settings
from imageclf.core.promotion import Controller


def test_one_controller_per_model_and_a_takeover_when_it_dies(redis_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    for name in ("plants", "birds"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(settings, "MODEL_REPOSITORY", str(tmp_path))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    lock = "imageclf:promotion-controller:"
    client.delete(lock + "plants", lock + "birds")
    log = logging.getLogger("test-promotion")
    first = Controller(client, lambda: None, log, "first", 2000)
    second = Controller(client, lambda: None, log, "second", 2000)

    monkeypatch.setattr(settings, "MODELS", ["plants"])  # the first process serves plants only
    first.check_all()
    monkeypatch.setattr(settings, "MODELS", ["plants", "birds"])
    second.check_all()
    assert client.get(lock + "plants") == "first" and client.get(lock + "birds") == "second"
    for _ in range(3):  # its holder's checks keep it
        time.sleep(0.5)
        monkeypatch.setattr(settings, "MODELS", ["plants"])
        first.check_all()
        monkeypatch.setattr(settings, "MODELS", ["plants", "birds"])
        second.check_all()
        assert client.get(lock + "plants") == "first"
    time.sleep(2.2)  # the first stopped checking (killed): its lock expires and the second takes it
    second.check_all()
    assert client.get(lock + "plants") == "second"
