"""Sliding-window rate limits kept in Redis, so every replica of a service counts against one limit.

The window is a log: one sorted-set member per counted request, scored by Redis's own clock (replicas
with skewed clocks agree). Admitting a request and counting it are one script, so concurrent requests
cannot all slip under the limit between a check and a count.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

_SLIDING_WINDOW_ADMIT = """
{before}
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  {on_admit}
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


def sliding_window_admit_script(*, before: str = "", on_admit: str = "") -> str:
    """The Lua that admits a request under the limit and counts it, or refuses it.

    KEYS[1] is the subject's window, ARGV[1] the window in milliseconds, ARGV[2] the limit, ARGV[3] a
    member unique to the request. It returns 0 when admitted, else the milliseconds until the oldest
    counted request leaves the window. `on_admit` is more Lua run only for an admitted request, in the
    same step (its own KEYS[2:] and ARGV[4:]). `before` is Lua run first, which may refuse the
    request with a negative return before it is counted.
    """
    return _SLIDING_WINDOW_ADMIT.replace("{before}", before).replace("{on_admit}", on_admit)


def retry_after_seconds(wait_ms: int) -> int:
    """Whole seconds for a Retry-After header: rounded up, never 0 for a refusal."""
    return max(1, math.ceil(wait_ms / 1000))


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_seconds: int = 0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One admitted or refused request; an admitted one can be taken back out of the count."""

    decision: RateDecision
    subject: str
    member: str


class RateLimitUnavailable(Exception):
    """Redis did not answer in time, so whether the request is within its limit is unknown."""


class SlidingWindowLimit:
    """At most `limit` counted requests per subject in any `window_seconds`-long stretch of time."""

    def __init__(
        self, redis: Redis, *, key_prefix: str, limit: int, window_seconds: int, timeout: float
    ) -> None:
        self._redis = redis
        self._key_prefix = key_prefix
        self._limit = limit
        self._window_ms = window_seconds * 1000
        self._timeout = timeout
        self._admit = redis.register_script(sliding_window_admit_script())

    async def admit(self, subject: str) -> Attempt:
        """Count a request against `subject`, or refuse it when the window is full."""
        member = uuid.uuid4().hex
        try:
            async with asyncio.timeout(self._timeout):
                wait_ms = int(
                    await self._admit(
                        keys=[self._key_prefix + subject], args=[self._window_ms, self._limit, member]
                    )
                )
        except (RedisError, OSError) as error:  # OSError includes TimeoutError
            raise RateLimitUnavailable("the rate-limit store (Redis) did not answer in time") from error
        if wait_ms == 0:
            return Attempt(RateDecision(allowed=True), subject=subject, member=member)
        decision = RateDecision(allowed=False, retry_after_seconds=retry_after_seconds(wait_ms))
        return Attempt(decision, subject=subject, member=member)

    async def forget(self, attempt: Attempt) -> None:
        """Take an admitted request back out of the count (it turned out not to be one the limit is
        about, such as a log-in whose password was right)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.zrem(self._key_prefix + attempt.subject, attempt.member)
        except (RedisError, OSError) as error:
            raise RateLimitUnavailable("the rate-limit store (Redis) did not answer in time") from error
