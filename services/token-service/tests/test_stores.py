"""The Redis stores against a real Redis: the sliding-window limit and the room -> session mapping."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from agentline_token_service.service import DependencyUnavailable, SessionRef
from agentline_token_service.stores import ROOM_KEY_PREFIX, RedisRateLimiter, RedisSessionRooms
from redis.asyncio import Redis

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_the_limit_admits_n_then_refuses_with_the_wait(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, limit=3, window_seconds=30, timeout=2)
    subject = f"user:{uuid.uuid4()}"

    decisions = [await limiter.hit(subject) for _ in range(4)]

    assert [decision.allowed for decision in decisions] == [True, True, True, False]
    assert 1 <= decisions[-1].retry_after_seconds <= 30
    assert (await limiter.hit(f"user:{uuid.uuid4()}")).allowed, "another user has a window of their own"


async def test_the_window_slides(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, limit=2, window_seconds=1, timeout=2)
    subject = f"user:{uuid.uuid4()}"
    assert (await limiter.hit(subject)).allowed
    assert (await limiter.hit(subject)).allowed
    refused = await limiter.hit(subject)
    assert not refused.allowed and refused.retry_after_seconds == 1

    await asyncio.sleep(1.1)

    assert (await limiter.hit(subject)).allowed


async def test_concurrent_hits_never_exceed_the_limit(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, limit=10, window_seconds=30, timeout=2)
    subject = f"user:{uuid.uuid4()}"

    decisions = await asyncio.gather(*(limiter.hit(subject) for _ in range(50)))

    assert sum(decision.allowed for decision in decisions) == 10


async def test_sessions_are_kept_by_room_with_a_lifetime(redis: Redis) -> None:
    rooms = RedisSessionRooms(redis, ttl_seconds=3600, timeout=2)
    room_name = f"test_{uuid.uuid4()}_{secrets.token_hex(6)}"
    ref = SessionRef(session_id=uuid.uuid4(), agent_id=uuid.uuid4(), org_id=uuid.uuid4())

    await rooms.save(room_name, ref)

    assert await rooms.load(room_name) == ref
    assert 3590 <= await redis.ttl(ROOM_KEY_PREFIX + room_name) <= 3600
    assert await rooms.load(f"test_{uuid.uuid4()}_{secrets.token_hex(6)}") is None


async def test_an_unreachable_redis_is_a_bounded_refusal() -> None:
    # Port 9 (discard) on loopback: nothing listens there, so the connection is refused.
    unreachable = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    try:
        limiter = RedisRateLimiter(unreachable, limit=1, window_seconds=1, timeout=1)
        with pytest.raises(DependencyUnavailable, match="Redis could not be reached"):
            await limiter.hit("user:x")
        rooms = RedisSessionRooms(unreachable, ttl_seconds=60, timeout=1)
        with pytest.raises(DependencyUnavailable):
            await rooms.load("test_x")
    finally:
        await unreachable.aclose()
