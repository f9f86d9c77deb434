"""Where consumers remember the events they have handled, so a redelivery is processed once.

A delivery first *claims* its event id atomically. Two copies of one event delivered at the same time
(to one consumer with prefetch, or to two replicas) cannot both win the claim; the loser sees "busy"
and goes back to the queue, then finds the event "done". A claim that is never completed (the process
died mid-handler) lapses after `claim_seconds`, so the event is handled again rather than lost.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from redis.asyncio import Redis

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_CLAIM_SECONDS = 120
_DONE = b"done"


class Claim(StrEnum):
    NEW = "new"
    BUSY = "busy"
    DONE = "done"


class ProcessedEvents(Protocol):
    """Idempotency on the event id, per consumer."""

    async def claim(self, consumer: str, event_id: UUID) -> Claim: ...

    async def complete(self, consumer: str, event_id: UUID) -> None: ...

    async def release(self, consumer: str, event_id: UUID) -> None: ...


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

    @staticmethod
    def _key(consumer: str, event_id: UUID) -> str:
        return f"agentline:processed:{consumer}:{event_id}"

    async def claim(self, consumer: str, event_id: UUID) -> Claim:
        key = self._key(consumer, event_id)
        if await self._redis.set(key, b"claimed", nx=True, ex=self._claim_seconds):
            return Claim.NEW
        return Claim.DONE if await self._redis.get(key) == _DONE else Claim.BUSY

    async def complete(self, consumer: str, event_id: UUID) -> None:
        await self._redis.set(self._key(consumer, event_id), _DONE, ex=self._retention)

    async def release(self, consumer: str, event_id: UUID) -> None:
        await self._redis.delete(self._key(consumer, event_id))


class InMemoryProcessedEvents:
    """The same contract in a dict: for unit tests and single-process tools."""

    def __init__(self, *, claim_seconds: float = DEFAULT_CLAIM_SECONDS) -> None:
        self._state: dict[tuple[str, UUID], tuple[Claim, float]] = {}
        self._claim_seconds = claim_seconds

    async def claim(self, consumer: str, event_id: UUID) -> Claim:
        key = (consumer, event_id)
        state = self._state.get(key)
        now = time.monotonic()
        if state is None or (state[0] is Claim.BUSY and state[1] < now):
            self._state[key] = (Claim.BUSY, now + self._claim_seconds)
            return Claim.NEW
        return state[0]

    async def complete(self, consumer: str, event_id: UUID) -> None:
        self._state[(consumer, event_id)] = (Claim.DONE, float("inf"))

    async def release(self, consumer: str, event_id: UUID) -> None:
        self._state.pop((consumer, event_id), None)
