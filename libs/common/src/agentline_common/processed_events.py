"""Where consumers remember the events they have handled, so a redelivery is processed once.

A delivery first *claims* its event id atomically. Two copies of one event delivered at the same time
(to one consumer with prefetch, or to two replicas) cannot both win the claim; the loser sees "busy"
and goes back to the queue, then finds the event "done". A claim that is never completed (the process
died mid-handler) lapses after `claim_seconds`, so the event is handled again rather than lost.

Every operation takes many event ids at once, so a consumer handling a batch of deliveries pays one
round trip to the store per step, not one per event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from redis.asyncio import Redis

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_CLAIM_SECONDS = 120
_DONE = b"done"

# One round trip for a whole batch: each key is claimed if free, else reported as done or busy. Keys
# are handled in order, so the second copy of an id within one batch sees the first one's claim.
_CLAIM_MANY = """
local claims = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, 'claimed', 'NX', 'EX', ARGV[1]) then
    claims[i] = 'new'
  elseif redis.call('GET', key) == 'done' then
    claims[i] = 'done'
  else
    claims[i] = 'busy'
  end
end
return claims
"""


class Claim(StrEnum):
    NEW = "new"
    BUSY = "busy"
    DONE = "done"


class ProcessedEvents(Protocol):
    """Idempotency on the event id, per consumer; the answers come in the order of `event_ids`."""

    async def claim(self, consumer: str, event_ids: Sequence[UUID]) -> list[Claim]: ...

    async def complete(self, consumer: str, event_ids: Sequence[UUID]) -> None: ...

    async def release(self, consumer: str, event_ids: Sequence[UUID]) -> None: ...


class RedisProcessedEvents:
    """Claims and completions in Redis, kept long enough to outlive any redelivery."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        claim_seconds: int = DEFAULT_CLAIM_SECONDS,
    ) -> None:
        self._redis = redis
        self._retention = retention_seconds
        self._claim_seconds = claim_seconds
        self._claim_many = redis.register_script(_CLAIM_MANY)

    @staticmethod
    def _key(consumer: str, event_id: UUID) -> str:
        return f"agentline:processed:{consumer}:{event_id}"

    async def claim(self, consumer: str, event_ids: Sequence[UUID]) -> list[Claim]:
        if not event_ids:
            return []
        keys = [self._key(consumer, event_id) for event_id in event_ids]
        answers = await self._claim_many(keys=keys, args=[self._claim_seconds])
        return [Claim(answer.decode() if isinstance(answer, bytes) else answer) for answer in answers]

    async def complete(self, consumer: str, event_ids: Sequence[UUID]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.set(self._key(consumer, event_id), _DONE, ex=self._retention)
            await pipe.execute()

    async def release(self, consumer: str, event_ids: Sequence[UUID]) -> None:
        if event_ids:
            await self._redis.delete(*(self._key(consumer, event_id) for event_id in event_ids))


class InMemoryProcessedEvents:
    """The same contract in a dict: for unit tests and single-process tools."""

    def __init__(self, *, claim_seconds: float = DEFAULT_CLAIM_SECONDS) -> None:
        self._state: dict[tuple[str, UUID], tuple[Claim, float]] = {}
        self._claim_seconds = claim_seconds

    async def claim(self, consumer: str, event_ids: Sequence[UUID]) -> list[Claim]:
        return [self._claim_one((consumer, event_id)) for event_id in event_ids]

    def _claim_one(self, key: tuple[str, UUID]) -> Claim:
        state = self._state.get(key)
        now = time.monotonic()
        if state is None or (state[0] is Claim.BUSY and state[1] < now):
            self._state[key] = (Claim.BUSY, now + self._claim_seconds)
            return Claim.NEW
        return state[0]

    async def complete(self, consumer: str, event_ids: Sequence[UUID]) -> None:
        for event_id in event_ids:
            self._state[(consumer, event_id)] = (Claim.DONE, float("inf"))

    async def release(self, consumer: str, event_ids: Sequence[UUID]) -> None:
        for event_id in event_ids:
            self._state.pop((consumer, event_id), None)
