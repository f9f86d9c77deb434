"""Where consumers remember the events they have handled, so a redelivery is processed once."""

from __future__ import annotations

from uuid import UUID

from redis.asyncio import Redis

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600


class RedisProcessedEvents:
    """Event ids per consumer in Redis, kept long enough to outlive any redelivery."""

    def __init__(self, redis: Redis, *, retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> None:
        self._redis = redis
        self._retention = retention_seconds

    @staticmethod
    def _key(consumer: str, event_id: UUID) -> str:
        return f"agentline:processed:{consumer}:{event_id}"

    async def is_processed(self, consumer: str, event_id: UUID) -> bool:
        return bool(await self._redis.exists(self._key(consumer, event_id)))

    async def mark_processed(self, consumer: str, event_id: UUID) -> None:
        await self._redis.set(self._key(consumer, event_id), b"1", ex=self._retention)


class InMemoryProcessedEvents:
    """The same contract in a set: for unit tests and single-process tools."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, UUID]] = set()

    async def is_processed(self, consumer: str, event_id: UUID) -> bool:
        return (consumer, event_id) in self._seen

    async def mark_processed(self, consumer: str, event_id: UUID) -> None:
        self._seen.add((consumer, event_id))
