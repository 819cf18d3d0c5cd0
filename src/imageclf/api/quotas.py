"""Per-key rate limits and daily quotas (imageclf.api.keyring): a token bucket and a day's count in Redis, checked
and charged in one atomic call, so every API process and host shares them.

A request costs one token per image (`/predict` 1, a v2 batch its size, a job all its images). A cost
larger than what the bucket holds is admitted once the bucket is full, and leaves it in debt, so a large job
is never refused forever and still pays for every image. Over a limit: 429 (RESOURCE_EXHAUSTED over gRPC)
with Retry-After and the RateLimit-Limit / RateLimit-Remaining / RateLimit-Reset headers, which admitted
responses carry too. Polling results is free.

A refusal is remembered by the API process: until the key's bucket could hold the tokens asked for again
(it refills at its rate, and other processes can only take from it) or, past its daily quota, for the rest
of the day, the key's requests are refused here without asking Redis. Under a key's overload that is most of
its requests, each one round trip to Redis less (docs/benchmarks/quotas.md). It never refuses what Redis
would admit: the tokens are counted from before the refused call was sent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import redis
from flask import g

from imageclf.api.errors import APIError
from imageclf.api.keyring import Limits
from imageclf.api.submissions import queue_unavailable, redis_client

ANONYMOUS = "-"  # imageclf.api.auth's owner of requests without keys
BUCKET_PREFIX = "imageclf:ratelimit:"
DAY_PREFIX = "imageclf:quota:"

# KEYS: bucket, today's count. ARGV: rate/s (0: none), burst, cost, daily (0: none).
# Returns {admitted 0/1, why, remaining, reset_s, retry_after_s, used today} (numbers as strings: Lua would
# truncate them to integers).
_CHARGE = """
local rate, burst, cost, daily = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if daily > 0 and used + cost > daily then
  return {0, 'daily', tostring(math.max(0, daily - used)), '0', '0', tostring(used)}
end
local tokens = burst
if rate > 0 then
  local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  if held[1] then tokens = math.min(burst, tonumber(held[1]) + (now - tonumber(held[2])) * rate) end
  if tokens < math.min(cost, burst) then
    return {0, 'rate', tostring(math.max(0, tokens)), tostring((burst - tokens) / rate),
            tostring((math.min(cost, burst) - tokens) / rate), tostring(used)}
  end
  tokens = tokens - cost
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
  redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 60)
end
if daily > 0 then
  used = redis.call('INCRBY', KEYS[2], cost)
  redis.call('EXPIRE', KEYS[2], 2 * 86400)
end
local reset = 0
if rate > 0 then reset = (burst - tokens) / rate end
return {1, '', tostring(math.max(0, tokens)), tostring(reset), '0', tostring(used)}
"""


@dataclass(frozen=True)
class Decision:
    admitted: bool
    why: str
    limit: float
    remaining: float
    reset_s: float
    retry_after_s: float
    used_today: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(int(self.limit)), "RateLimit-Remaining": str(int(self.remaining)),
                "RateLimit-Reset": str(math.ceil(self.reset_s))}


@dataclass(frozen=True)
class _Refused:
    """A key's last refusal: by its rate (`why` "rate"), its bucket held `remaining` tokens at the latest at
    `asked_at` (monotonic seconds); by its daily quota, `remaining` images were left on `day`."""
    limits: Limits
    why: str
    asked_at: float
    remaining: float
    day: str
    used_today: int


#: The last refusal of each key by this process (bounded by the number of keys).
_refused: dict[str, _Refused] = {}


def _still_refused(owner: str, limits: Limits, cost: int) -> Decision | None:
    """The refusal `charge` would give now, known from the key's last one without asking Redis; None when Redis
    must be asked (it may admit)."""
    last = _refused.get(owner)
    if last is None or last.limits != limits:
        return None
    if last.why == "daily":
        if last.day != _day() or cost <= last.remaining:
            return None
        midnight = _seconds_to_midnight()
        return Decision(False, "daily", float(limits.daily or 0), last.remaining, midnight, midnight, last.used_today)
    rate, burst = limits.rate or 0.0, limits.burst or 0.0
    tokens = min(burst, last.remaining + (time.monotonic() - last.asked_at) * rate)
    need = min(cost, burst)
    if rate <= 0 or tokens >= need:
        return None
    return Decision(False, "rate", burst, tokens, (burst - tokens) / rate, (need - tokens) / rate, last.used_today)


def _day() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


def _seconds_to_midnight() -> float:
    return 86400 - time.time() % 86400


def charge(client: redis.Redis, owner: str, limits: Limits, cost: int) -> Decision | None:
    """Take `cost` tokens from `owner`'s limits; None when the key has none; the Decision either way."""
    if limits.rate is None and limits.daily is None:
        return None
    known = _still_refused(owner, limits, cost)
    if known is not None:
        return known
    asked_at = time.monotonic()
    admitted, why, remaining, reset, retry, used = client.eval(
        _CHARGE, 2, BUCKET_PREFIX + owner, f"{DAY_PREFIX}{owner}:{_day()}",
        limits.rate or 0, limits.burst or 0, cost, limits.daily or 0)
    why = why.decode() if isinstance(why, bytes) else why
    if admitted:
        _refused.pop(owner, None)
    else:
        _refused[owner] = _Refused(limits, why, asked_at, float(remaining), _day(), int(float(used)))
    if why == "daily" or (limits.rate is None and limits.daily is not None):
        limit, reset_s = float(limits.daily or 0), _seconds_to_midnight()
        remaining_f = float(remaining) if why == "daily" else float(limits.daily or 0) - float(used)
        return Decision(bool(admitted), why, limit, max(0.0, remaining_f), reset_s,
                        reset_s if why == "daily" else 0.0, int(float(used)))
    return Decision(bool(admitted), why, float(limits.burst or 0), float(remaining), float(reset), float(retry),
                    int(float(used)))


def enforce(client: redis.Redis, owner: str, limits: Limits, cost: int) -> Decision | None:
    """`charge`, turning a refusal into a 429 that says which limit and when to retry."""
    decision = charge(client, owner, limits, cost)
    if decision is None or decision.admitted:
        return decision
    retry = max(1, math.ceil(decision.retry_after_s))
    headers = {**decision.headers(), "Retry-After": str(retry)}
    if decision.why == "daily":
        raise APIError(429, f"this key's daily quota of {limits.daily} images is used up ({decision.used_today} "
                            f"today; {cost} asked); it renews at midnight UTC", headers)
    raise APIError(429, f"this key is over its rate limit ({limits.rate:g} images/s, burst {limits.burst:g}); "
                        f"retry in {retry} s", headers)


def usage(client: redis.Redis, owner: str, limits: Limits) -> dict[str, Any]:
    """The key's own figures for GET /usage, read without charging anything."""
    tokens, at = client.hmget(BUCKET_PREFIX + owner, "tokens", "at")
    used = int(client.get(f"{DAY_PREFIX}{owner}:{_day()}") or 0)
    available = None
    if limits.rate is not None:
        available = limits.burst if tokens is None or at is None else min(
            limits.burst or 0.0, float(tokens) + (time.time() - float(at)) * limits.rate)
    return {"key_id": owner, "limits": limits.describe(),
            "today": {"used": used, "remaining": None if limits.daily is None else max(0, limits.daily - used)},
            "tokens": None if available is None else round(max(0.0, available), 3)}


def charge_request(cost: int) -> None:
    """Charge the key that sent this request `cost` images (nothing without keys); 429 over its limits. The
    admitted charge's RateLimit headers go on the response (imageclf.api.auth)."""
    if g.get("owner", ANONYMOUS) == ANONYMOUS:
        return
    with queue_unavailable():
        g.rate_limit = enforce(redis_client(), g.owner, g.limits, cost)
