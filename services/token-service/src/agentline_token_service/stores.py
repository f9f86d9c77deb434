"""What the token-service keeps in Redis: per-user rate-limit windows and room -> session mappings.

Both are shared by every instance of the service, so a user cannot beat the limit by landing on another
replica, and any replica can answer LiveKit's webhook for a room another one issued.
"""

from __future__ import annotations

import asyncio
import uuid

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agentline_token_service.service import DependencyUnavailable, RateDecision, SessionRef

RATE_KEY_PREFIX = "agentline:token-service:rate:"
ROOM_KEY_PREFIX = "agentline:token-service:room:"

# A sliding-window log: one sorted-set member per request, scored by Redis's own clock (so replicas
# with skewed clocks agree). Returns 0 when the request is admitted, else the milliseconds until the
# oldest request in the window leaves it.
_SLIDING_WINDOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

_UNAVAILABLE = "Redis could not be reached in time; try again in a few seconds"


class RedisRateLimiter:
    """At most `limit` hits per subject in any `window_seconds`-long stretch of time."""

    def __init__(self, redis: Redis, *, limit: int, window_seconds: int, timeout: float) -> None:
        self._redis = redis
        self._limit = limit
        self._window_ms = window_seconds * 1000
        self._timeout = timeout
        self._script = redis.register_script(_SLIDING_WINDOW)

    async def hit(self, subject: str) -> RateDecision:
        try:
            async with asyncio.timeout(self._timeout):
                wait_ms = int(
                    await self._script(
                        keys=[RATE_KEY_PREFIX + subject],
                        args=[self._window_ms, self._limit, uuid.uuid4().hex],
                    )
                )
        except (RedisError, TimeoutError, OSError) as error:
            raise DependencyUnavailable(f"the rate limiter's store is unavailable: {_UNAVAILABLE}") from error
        if wait_ms == 0:
            return RateDecision(allowed=True)
        return RateDecision(allowed=False, retry_after_seconds=max(1, -(-wait_ms // 1000)))


class RedisSessionRooms:
    """room name -> SessionRef, kept for `ttl_seconds` (longer than any test call lasts)."""

    def __init__(self, redis: Redis, *, ttl_seconds: int, timeout: float) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._timeout = timeout

    async def save(self, room_name: str, ref: SessionRef) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(ROOM_KEY_PREFIX + room_name, ref.model_dump_json(), ex=self._ttl)
        except (RedisError, TimeoutError, OSError) as error:
            raise DependencyUnavailable(f"the session store is unavailable: {_UNAVAILABLE}") from error

    async def load(self, room_name: str) -> SessionRef | None:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(ROOM_KEY_PREFIX + room_name)
        except (RedisError, TimeoutError, OSError) as error:
            raise DependencyUnavailable(f"the session store is unavailable: {_UNAVAILABLE}") from error
        if raw is None:
            return None
        try:
            return SessionRef.model_validate_json(raw)
        except ValidationError:
            return None
