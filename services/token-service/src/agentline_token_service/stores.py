"""What the token-service keeps in Redis: per-user rate-limit windows and room -> session mappings;
and what it reads there: when the registry removed a member from an organisation.

Both are shared by every instance of the service, so a user cannot beat the limit by landing on another
replica, and any replica can answer LiveKit's webhook for a room another one issued. Admitting a test
call and recording its room are one script, one round trip: a refused call leaves no mapping, and an
admitted one is recorded before its token can leave.
"""

from __future__ import annotations

import asyncio
import uuid

from agentline_common.auth import removed_member_key
from agentline_common.rate_limits import RateDecision, retry_after_seconds, sliding_window_admit_script
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agentline_token_service.service import DependencyUnavailable, MemberRemoved, SessionRef

RATE_KEY_PREFIX = "agentline:token-service:rate:"
ROOM_KEY_PREFIX = "agentline:token-service:room:"

# The shared sliding-window admission that, for an admitted request, also stores its room's session
# mapping (KEYS[2], ARGV[4], ARGV[5]); first of all, it refuses with -1, uncounted, a user whom the
# registry removed from the organisation after their token was issued (KEYS[3], ARGV[6]).
_ADMIT_AND_RECORD = sliding_window_admit_script(
    before="""
local removed_at = redis.call('GET', KEYS[3])
if removed_at and tonumber(removed_at) >= tonumber(ARGV[6]) then
  return -1
end""",
    on_admit="redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])",
)

_UNAVAILABLE = "Redis could not be reached in time; try again in a few seconds"


class RedisTestCalls:
    """At most `limit` test calls per subject in any `window_seconds`-long stretch of time, and
    room name -> SessionRef of each admitted call, kept for `mapping_ttl_seconds` (a day by default,
    longer than a test call lasts)."""

    def __init__(
        self,
        redis: Redis,
        *,
        limit: int,
        window_seconds: int,
        mapping_ttl_seconds: int,
        timeout: float,
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._window_ms = window_seconds * 1000
        self._mapping_ttl = mapping_ttl_seconds
        self._timeout = timeout
        self._script = redis.register_script(_ADMIT_AND_RECORD)

    async def admit(
        self, subject: str, *, room_name: str, ref: SessionRef, user: uuid.UUID, token_issued_at: int
    ) -> RateDecision:
        try:
            async with asyncio.timeout(self._timeout):
                wait_ms = int(
                    await self._script(
                        keys=[
                            RATE_KEY_PREFIX + subject,
                            ROOM_KEY_PREFIX + room_name,
                            removed_member_key(ref.org_id, user),
                        ],
                        args=[
                            self._window_ms,
                            self._limit,
                            uuid.uuid4().hex,
                            ref.model_dump_json(),
                            self._mapping_ttl,
                            token_issued_at,
                        ],
                    )
                )
        except (RedisError, TimeoutError, OSError) as error:
            raise DependencyUnavailable(f"the test-call store is unavailable: {_UNAVAILABLE}") from error
        if wait_ms < 0:
            raise MemberRemoved(
                f"you were removed from the organisation that owns agent {ref.agent_id}; "
                "ask one of its owners or admins to add you again, then sign in again"
            )
        if wait_ms == 0:
            return RateDecision(allowed=True)
        return RateDecision(allowed=False, retry_after_seconds=retry_after_seconds(wait_ms))

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
