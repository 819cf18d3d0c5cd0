"""API keys and their limits, from API_KEYS and, re-read whenever it changes, API_KEYS_FILE.

An entry is a key, optionally followed by limits: `key1:rate=20/s:burst=40:daily=100000`. `rate` is a
number per `s`, `min` or `h` (tokens refilled; one token per image), `burst` the bucket's size (default: one
second of `rate`, at least 1), `daily` the images per UTC day. A file holds one entry per line (`#`
comments). A broken file is reported in the log and the keys read before stay in force, so a typo never
locks every client out or lets every client in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger("imageclf.api.keys")

_PER = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_RECHECK_S = 1.0  # how often the keys file's modification time is looked at


def owner_of(key: str) -> str:
    """A stable, non-reversible id for a key (what Redis stores, never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class KeyringError(ValueError):
    """An entry that cannot be read; the message names where, never the key itself."""


@dataclass(frozen=True)
class Limits:
    rate: float | None = None  # tokens (images) per second
    burst: float | None = None
    daily: int | None = None

    def describe(self) -> dict[str, float | int | None]:
        return {"rate_per_s": self.rate, "burst": self.burst, "daily": self.daily}


def parse_entry(entry: str, where: str) -> tuple[str, Limits]:
    """(key, its limits) from one entry."""
    key, *parts = entry.strip().split(":")
    if not key:
        raise KeyringError(f"{where}: an entry has no key before its limits")
    fields: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or name not in ("rate", "burst", "daily") or name in fields:
            raise KeyringError(f"{where}: {part!r} is not one of rate=N/s|min|h, burst=N, daily=N (each once)")
        fields[name] = value
    try:
        rate = None
        if "rate" in fields:
            amount, _, unit = fields["rate"].partition("/")
            rate = float(amount) / _PER[unit or "s"]
        burst = float(fields["burst"]) if "burst" in fields else (max(1.0, rate) if rate else None)
        daily = int(fields["daily"]) if "daily" in fields else None
    except (ValueError, KeyError):
        raise KeyringError(f"{where}: limits must read like rate=20/s, burst=40, daily=100000") from None
    if (rate is not None and rate <= 0) or (burst is not None and burst < 1) or (daily is not None and daily < 1):
        raise KeyringError(f"{where}: rate must be positive, burst and daily at least 1")
    if burst is not None and rate is None:
        raise KeyringError(f"{where}: burst needs a rate")
    return key, Limits(rate, burst, daily)


class KeyRing:
    """Who may call, and with which limits; `lookup` re-reads the keys file when it changed."""

    def __init__(self, entries: list[str], path: str = "") -> None:
        self._fixed = dict(parse_entry(e, f"API_KEYS entry {n + 1}") for n, e in enumerate(entries))
        self._path = path
        self._lock = threading.Lock()
        self._from_file: dict[str, Limits] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._owners: dict[str, Limits] = {}
        self._rebuild()
        if path:
            self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or bool(self._path)

    def lookup(self, key: str | None) -> tuple[str, Limits] | None:
        """(owner id, limits) of a known key, else None."""
        if self._path and time.monotonic() - self._checked > _RECHECK_S:
            self._reload()
        if not key:
            return None
        owner = owner_of(key)
        limits = self._owners.get(owner)
        return (owner, limits) if limits is not None else None

    def limits_of(self, owner: str) -> Limits:
        return self._owners.get(owner, Limits())

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                stat = os.stat(self._path)
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp == self._stamp and not force:
                    return
                with open(self._path, encoding="utf-8") as f:
                    lines = [(n + 1, line.split("#", 1)[0].strip()) for n, line in enumerate(f)]
                found = dict(parse_entry(text, f"{self._path} line {n}") for n, text in lines if text)
            except (OSError, UnicodeDecodeError, KeyringError) as exc:
                if force or not isinstance(exc, FileNotFoundError) or self._from_file:
                    logger.error("API_KEYS_FILE not applied, the keys read before stay: %s", exc)
                self._stamp = None
                return
            self._stamp, self._from_file = stamp, found
            logger.info("API_KEYS_FILE %s: %d key(s)", self._path, len(found))
            self._rebuild()

    def _rebuild(self) -> None:
        self._owners = {owner_of(k): v for k, v in {**self._from_file, **self._fixed}.items()}
