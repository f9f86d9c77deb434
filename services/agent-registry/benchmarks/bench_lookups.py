"""Agent look-ups through RegistryClient at 32 concurrent callers: cold, warm Redis, warm.

Everything is real and on loopback: RabbitMQ, Redis and the registry's console script (SQLite). A
cold look-up drops the agent from both cache layers first (not timed), so it pays the bus round trip
to the registry and its database read; "warm Redis" drops only the process layer, so it is answered
by Redis; "warm" is what a busy service sees: the process layer (1 s) in front of Redis. The callers
share the machine's two cores with the broker, Redis and the registry.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from agentline_common.bus import Bus
from agentline_common.logging import configure_logging
from agentline_common.registry_client import RegistryClient, agent_key
from agentline_common.testing.bench import LoadResult, record
from agentline_common.testing.servers import RabbitMQServer, RedisServer, make_base_dir
from agentline_common.testing.services import RegistryService
from redis.asyncio import Redis

CONCURRENCY = 32
AGENTS = 32
WARM_UP = 200
LOOKUPS = 3000
GOAL_WARM_P99_MS = 5.0


async def measure(
    client: RegistryClient, redis: Redis, agent_ids: list[uuid.UUID], *, warm: str, total: int
) -> LoadResult:
    """`total` look-ups spread over the agents; only the look-up itself is timed."""
    latencies: list[float] = []
    ids = itertools.cycle(agent_ids)
    remaining = total

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            agent_id = next(ids)
            if warm == "none":
                await redis.delete(agent_key(agent_id))
            if warm != "all":
                client.clear_local_cache()
            began = time.perf_counter()
            await client.get_agent(agent_id)
            latencies.append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return LoadResult(count=len(latencies), seconds=time.perf_counter() - started, latencies_ms=latencies)


def _records(label: str, result: LoadResult, *, goal_p99: float | None) -> list[dict[str, Any]]:
    p99_goal = f"< {goal_p99:g} ms" if goal_p99 is not None else ""
    return [
        record(f"registry look-ups/s ({label} cache, {CONCURRENCY} callers)", result.per_second, "1/s"),
        record(f"registry look-up p50 ({label} cache)", result.p50, "ms"),
        record(
            f"registry look-up p99 ({label} cache)",
            result.p99,
            "ms",
            goal=p99_goal,
            met=(result.p99 < goal_p99) if goal_p99 is not None else None,
        ),
    ]


async def run() -> list[dict[str, Any]]:
    configure_logging(service="bench", json=False, level="WARNING")
    broker = RabbitMQServer(base_dir=make_base_dir("bench-rabbitmq"))
    redis_server = RedisServer(base_dir=make_base_dir("bench-redis"))
    await asyncio.gather(asyncio.to_thread(broker.start), asyncio.to_thread(redis_server.start))
    registry = RegistryService(
        amqp_url=broker.url,
        redis_url=redis_server.url,
        exchange="bench-lookups",
        base_dir=make_base_dir("bench-registry"),
    )
    bus = Bus(broker.url, exchange=registry.exchange)
    redis = Redis.from_url(redis_server.url)
    try:
        await asyncio.to_thread(registry.prepare)
        await asyncio.to_thread(registry.start)
        tenant = await asyncio.to_thread(registry.new_tenant)
        agent_ids = [tenant.agent_id]
        for _ in range(AGENTS - 1):
            agent = await asyncio.to_thread(registry.create_agent, tenant.token, tenant.org_id)
            agent_ids.append(uuid.UUID(agent["id"]))
        await bus.connect()
        client = RegistryClient(bus=bus, redis=redis, ttl_seconds=600)
        await client.start()

        await measure(client, redis, agent_ids, warm="none", total=WARM_UP)
        cold = await measure(client, redis, agent_ids, warm="none", total=LOOKUPS)
        for agent_id in agent_ids:
            await client.get_agent(agent_id)
        warm_redis = await measure(client, redis, agent_ids, warm="redis", total=LOOKUPS)
        warm = await measure(client, redis, agent_ids, warm="all", total=LOOKUPS)
        return [
            *_records("cold", cold, goal_p99=None),
            *_records("warm Redis", warm_redis, goal_p99=None),
            *_records("warm", warm, goal_p99=GOAL_WARM_P99_MS),
        ]
    finally:
        await bus.close()
        await redis.aclose()
        await asyncio.to_thread(registry.stop)
        await asyncio.gather(asyncio.to_thread(broker.close), asyncio.to_thread(redis_server.stop))


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row)
