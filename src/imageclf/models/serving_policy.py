"""Which versions of a repository model serve, and which requests each one gets.

Three config.json keys, beside the preprocessing ones (imageclf.models.repository):

    "version_policy": {"latest": 1} | {"specific": [1, 3]} | {"all": true}     Triton's names
    "traffic": {"2": 10, "default": 1}     10 % of the requests that name no version go to version 2;
                                           the rest to the default (the highest served version unless set)
    "shadow": {"version": 3, "share": 100} that share of the default version's interactive requests is
                                           computed again by version 3, in the bulk lane, and compared

Pure Python: the workers apply the policy to the versions they manage to load and announce the
outcome (`Routing`) through Redis; the API splits requests by it, and checks an operator's new
policy with the same parser before writing it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageclf.models.repository import RepositoryError


@dataclass(frozen=True)
class Shadow:
    version: int
    share: float


@dataclass(frozen=True)
class ServingPolicy:
    """A model's version_policy, traffic and shadow, validated."""

    latest: int | None = 1
    specific: tuple[int, ...] | None = None
    all: bool = False
    default: int | None = None
    traffic: dict[int, float] = field(default_factory=dict)
    shadow: Shadow | None = None

    def select(self, candidates: list[int]) -> list[int]:
        """The versions to serve out of `candidates` (those present and loadable), ascending."""
        ordered = sorted(candidates)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1):]

    def named_versions(self) -> set[int]:
        """Every version the traffic and shadow settings name (they must be served)."""
        named = set(self.traffic)
        if self.default is not None:
            named.add(self.default)
        if self.shadow is not None:
            named.add(self.shadow.version)
        return named

    def describe(self) -> dict[str, Any]:
        """The config.json form (also what GET /models and PUT /models/<m>/policy show)."""
        policy: dict[str, Any] = ({"all": True} if self.all else {"specific": list(self.specific)}
                                  if self.specific is not None else {"latest": self.latest})
        traffic: dict[str, Any] = {str(v): share for v, share in sorted(self.traffic.items())}
        if self.default is not None:
            traffic["default"] = self.default
        described: dict[str, Any] = {"version_policy": policy, "traffic": traffic}
        described["shadow"] = ({"version": self.shadow.version, "share": self.shadow.share}
                               if self.shadow is not None else None)
        return described

    def routing(self, ready: list[int]) -> Routing:
        """How requests are split over the versions that are `ready` (loaded and warm), with why a setting
        could not hold: a version that is not ready gets no traffic; its share goes to the default."""
        if not ready:
            return Routing(0, {}, None, ["no version is ready"])
        notes = []
        default = max(ready)
        if self.default is not None:
            if self.default in ready:
                default = self.default
            else:
                notes.append(f"default version {self.default} is not ready; version {default} serves instead")
        shares: dict[int, float] = {}
        for version, share in sorted(self.traffic.items()):
            if version == default or share <= 0:
                continue
            if version in ready:
                shares[version] = share
            else:
                notes.append(f"version {version} is not ready: its {share:g}% go to version {default}")
        shares[default] = max(0.0, 100.0 - sum(shares.values()))
        shadow = None
        if self.shadow is not None and self.shadow.share > 0:
            if self.shadow.version == default:
                notes.append(f"shadow version {self.shadow.version} is the default version: no shadow traffic")
            elif self.shadow.version in ready:
                shadow = self.shadow
            else:
                notes.append(f"shadow version {self.shadow.version} is not ready: no shadow traffic")
        return Routing(default, dict(sorted(shares.items())), shadow, notes)


@dataclass(frozen=True)
class Routing:
    """A policy applied to the ready versions: the default, each version's share in percent, the shadow."""

    default: int
    shares: dict[int, float]
    shadow: Shadow | None
    notes: list[str]

    def describe(self) -> dict[str, Any]:
        return {"default": self.default, "shares": {str(v): s for v, s in self.shares.items()},
                "shadow": {"version": self.shadow.version, "share": self.shadow.share} if self.shadow else None,
                "notes": self.notes}

    @classmethod
    def from_description(cls, raw: dict[str, Any]) -> Routing:
        shadow = raw.get("shadow")
        return cls(int(raw["default"]), {int(v): float(s) for v, s in raw.get("shares", {}).items()},
                   Shadow(int(shadow["version"]), float(shadow["share"])) if shadow else None,
                   list(raw.get("notes", [])))


def _version(path: Path, where: str, value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RepositoryError(f"{path}: {where} must be a version number (1, 2, ...), got {value!r}")
    return value


def _share(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 100:
        raise RepositoryError(f"{path}: {where} must be a percentage from 0 to 100, got {value!r}")
    return float(value)


def parse_policy(raw: dict[str, Any], path: Path) -> ServingPolicy:
    """The serving keys of a config.json's content; RepositoryError names `path` and the key at fault."""
    fields: dict[str, Any] = {}
    policy = raw.get("version_policy", {"latest": 1})
    if not isinstance(policy, dict) or len(policy) != 1 or next(iter(policy)) not in ("latest", "specific", "all"):
        raise RepositoryError(f"{path}: 'version_policy' must be one of {{\"latest\": N}}, "
                              f"{{\"specific\": [1, 3]}} or {{\"all\": true}}, got {policy!r}")
    (kind, value), = policy.items()
    if kind == "latest":
        fields["latest"] = _version(path, "'version_policy' latest", value)
    elif kind == "specific":
        if not isinstance(value, list) or not value:
            raise RepositoryError(f"{path}: 'version_policy' specific must be a non-empty list of versions, "
                                  f"got {value!r}")
        fields.update(latest=None, specific=tuple(sorted({_version(path, "'version_policy' specific", v)
                                                          for v in value})))
    else:
        if value is not True:
            raise RepositoryError(f"{path}: 'version_policy' all must be true, got {value!r}")
        fields.update(latest=None, all=True)
    traffic = raw.get("traffic") or {}
    if not isinstance(traffic, dict):
        raise RepositoryError(f"{path}: 'traffic' must be an object such as {{\"2\": 10}}, got {traffic!r}")
    shares = {}
    for key, share in traffic.items():
        if key == "default":
            fields["default"] = _version(path, "'traffic' default", share)
        else:
            shares[_version(path, "a 'traffic' key", key)] = _share(path, f"'traffic' {key!r}", share)
    if sum(shares.values()) > 100:
        raise RepositoryError(f"{path}: 'traffic' shares add up to {sum(shares.values()):g}%, more than 100")
    fields["traffic"] = shares
    shadow = raw.get("shadow")
    if shadow is not None:
        if not isinstance(shadow, dict) or set(shadow) - {"version", "share"} or "version" not in shadow:
            raise RepositoryError(f"{path}: 'shadow' must be {{\"version\": N, \"share\": 0-100}}, got {shadow!r}")
        fields["shadow"] = Shadow(_version(path, "'shadow' version", shadow["version"]),
                                  _share(path, "'shadow' share", shadow.get("share", 100)))
    return ServingPolicy(**fields)


def check_against(policy: ServingPolicy, present: list[int], path: Path) -> None:
    """RepositoryError when the policy names a version that is not in the repository or that it does not serve."""
    served = policy.select(present)
    if not served:
        raise RepositoryError(f"{path}: 'version_policy' {policy.describe()['version_policy']} serves none of the "
                              f"versions present ({', '.join(map(str, present)) or 'none'})")
    missing = sorted(policy.named_versions() - set(served))
    if missing:
        raise RepositoryError(f"{path}: names version(s) {', '.join(map(str, missing))}, which "
                              f"{'are not in the repository' if set(missing) - set(present) else 'it does not serve'}"
                              f"; served: {', '.join(map(str, served))}")


class Splitter:
    """Picks a version per request so that the shares hold closely over any run of requests.

    A low-discrepancy sequence (multiples of the golden ratio, from a random start) instead of
    random draws: over n requests each version's count is within a few of its share of n, where
    random draws wander by sqrt(n). Each API process keeps its own, so several add up the same.
    """

    _STEP = (math.sqrt(5) - 1) / 2

    def __init__(self) -> None:
        self._position = random.random()

    def next_fraction(self) -> float:
        """The next point in [0, 1) (the GIL makes the update atomic enough: a repeat only skews one pick)."""
        self._position = (self._position + self._STEP) % 1.0
        return self._position

    def pick(self, shares: dict[int, float]) -> int:
        """A version from {version: percent} (they add up to 100)."""
        point, total = self.next_fraction() * 100.0, 0.0
        for version, share in shares.items():
            total += share
            if point < total:
                return version
        return max(shares, key=lambda v: shares[v])
