"""The test-call store against a real Redis: the sliding-window limit and the room -> session mapping."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from agentline_common.auth import removed_member_key
from agentline_common.rate_limits import RateDecision
from agentline_token_service.service import DependencyUnavailable, MemberRemoved, SessionRef
from agentline_token_service.stores import ROOM_KEY_PREFIX, RedisTestCalls
from redis.asyncio import Redis

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


NOW = int(time.time())


def store(redis: Redis, *, limit: int = 10, window_seconds: int = 30) -> RedisTestCalls:
    return RedisTestCalls(
        redis, limit=limit, window_seconds=window_seconds, mapping_ttl_seconds=3600, timeout=2
    )


def new_call() -> tuple[str, SessionRef]:
    """A fresh test room and the session it would belong to."""
    ref = SessionRef(session_id=uuid.uuid4(), agent_id=uuid.uuid4(), org_id=uuid.uuid4())
    return f"test_{ref.agent_id}_{secrets.token_hex(6)}", ref


async def admit(calls: RedisTestCalls, subject: str) -> RateDecision:
    room_name, ref = new_call()
    return await calls.admit(subject, room_name=room_name, ref=ref, user=uuid.uuid4(), token_issued_at=NOW)


async def test_the_limit_admits_n_then_refuses_with_the_wait(redis: Redis) -> None:
    calls = store(redis, limit=3)
    subject = f"user:{uuid.uuid4()}"

    decisions = [await admit(calls, subject) for _ in range(4)]

    assert [decision.allowed for decision in decisions] == [True, True, True, False]
    assert 1 <= decisions[-1].retry_after_seconds <= 30
    assert (await admit(calls, f"user:{uuid.uuid4()}")).allowed, "another user has a window of their own"


async def test_the_window_slides(redis: Redis) -> None:
    calls = store(redis, limit=2, window_seconds=3)  # seconds, so that a stalled machine stays inside it
    subject = f"user:{uuid.uuid4()}"
    assert (await admit(calls, subject)).allowed
    assert (await admit(calls, subject)).allowed
    refused = await admit(calls, subject)
    assert not refused.allowed and 1 <= refused.retry_after_seconds <= 3

    await asyncio.sleep(3.1)

    assert (await admit(calls, subject)).allowed


async def test_concurrent_hits_never_exceed_the_limit(redis: Redis) -> None:
    calls = store(redis, limit=10)
    subject = f"user:{uuid.uuid4()}"

    decisions = await asyncio.gather(*(admit(calls, subject) for _ in range(50)))

    assert sum(decision.allowed for decision in decisions) == 10


async def test_an_admitted_call_maps_its_room_for_a_lifetime(redis: Redis) -> None:
    calls = store(redis)
    room_name, ref = new_call()

    assert (
        await calls.admit(
            f"user:{uuid.uuid4()}", room_name=room_name, ref=ref, user=uuid.uuid4(), token_issued_at=NOW
        )
    ).allowed

    assert await calls.load(room_name) == ref
    assert 3590 <= await redis.ttl(ROOM_KEY_PREFIX + room_name) <= 3600
    assert await calls.load(new_call()[0]) is None


async def test_a_refused_call_maps_no_room(redis: Redis) -> None:
    calls = store(redis, limit=1)
    subject = f"user:{uuid.uuid4()}"
    assert (await admit(calls, subject)).allowed
    room_name, ref = new_call()

    refused = await calls.admit(subject, room_name=room_name, ref=ref, user=uuid.uuid4(), token_issued_at=NOW)

    assert not refused.allowed
    assert await calls.load(room_name) is None
    assert await redis.exists(ROOM_KEY_PREFIX + room_name) == 0


async def test_a_token_older_than_the_users_removal_from_the_org_is_refused_and_not_counted(
    redis: Redis,
) -> None:
    """The registry notes the removal; the token's `orgs` claim still names the organisation."""
    calls = store(redis, limit=1)
    subject, user = f"user:{uuid.uuid4()}", uuid.uuid4()
    room_name, ref = new_call()
    await redis.set(removed_member_key(ref.org_id, user), NOW, ex=60)

    with pytest.raises(MemberRemoved, match="removed from the organisation"):
        await calls.admit(subject, room_name=room_name, ref=ref, user=user, token_issued_at=NOW - 30)

    assert await calls.load(room_name) is None
    signed_in_again = await calls.admit(
        subject, room_name=room_name, ref=ref, user=user, token_issued_at=NOW + 1
    )
    assert signed_in_again.allowed, "the refusal was not counted against the limit of one"
    other_org = SessionRef(session_id=uuid.uuid4(), agent_id=uuid.uuid4(), org_id=uuid.uuid4())
    elsewhere = await calls.admit(
        f"user:{uuid.uuid4()}", room_name=new_call()[0], ref=other_org, user=user, token_issued_at=NOW - 30
    )
    assert elsewhere.allowed, "only the organisation the user was removed from"


async def test_an_unreachable_redis_is_a_bounded_refusal() -> None:
    # Port 9 (discard) on loopback: nothing listens there, so the connection is refused.
    unreachable = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    try:
        calls = RedisTestCalls(unreachable, limit=1, window_seconds=1, mapping_ttl_seconds=60, timeout=1)
        with pytest.raises(DependencyUnavailable, match="Redis could not be reached"):
            await admit(calls, "user:x")
        with pytest.raises(DependencyUnavailable):
            await calls.load("test_x")
    finally:
        await unreachable.aclose()
