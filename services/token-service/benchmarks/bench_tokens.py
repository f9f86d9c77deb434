"""Test-token throughput and latency at 32 concurrent clients, next to /healthz of the same process.

Everything is real and on loopback: RabbitMQ, Redis, the registry (which also consumes every
`session.requested` into its SQLite call log during the run) and the token-service console script
under uvicorn. Each token costs a JWT check, a cached agent look-up, one Redis script (the rate limit
and the room mapping) and a publisher-confirmed event; /healthz costs only the HTTP stack, so the ratio
shows what the work adds. A confirmed publish alone, on the same broker and queue, is measured last:
it is the floor under every token, since no token leaves before its confirm. The load generator
shares the machine's two cores with all of it.

On two cores both goals come down to CPU per token across every process, so each phase also reports
the CPU milliseconds per request of the token-service, the registry (its session-log consumer, during
test-token) and the load generator; the broker's share is not included (read it with `top`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from agentline_common.bus import Bus
from agentline_common.events import SessionRequested, SessionRequestedData
from agentline_common.logging import configure_logging
from agentline_common.rooms import new_test_room
from agentline_common.testing.bench import LoadResult, cpu_seconds, record, run_load
from agentline_common.testing.servers import (
    RabbitMQServer,
    RedisServer,
    make_base_dir,
    new_livekit_credentials,
)
from agentline_common.testing.services import RegistryService, ServiceProcess, TokenServiceProcess

CONCURRENCY = 32
WARM_UP = 200
REQUESTS = 2000
GOAL_RATIO = 0.5
GOAL_P99_MS = 25.0


async def measure(
    client: aiohttp.ClientSession, method: str, url: str, *, processes: dict[str, int], **kwargs: Any
) -> tuple[LoadResult, int, dict[str, float]]:
    """The timed run after a warm-up, how many answers in it were not 200 (they count, slowly), and
    the CPU milliseconds per request each of `processes` (name -> pid) spent during the timed run."""
    failures = 0

    async def call() -> None:
        nonlocal failures
        try:
            async with client.request(method, url, **kwargs) as response:
                await response.read()
                failures += response.status != 200
        except aiohttp.ClientError:
            failures += 1

    await run_load(call, total=WARM_UP, concurrency=CONCURRENCY)
    failures = 0
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    result = await run_load(call, total=REQUESTS, concurrency=CONCURRENCY)
    cpu_ms = {
        name: (cpu_seconds(pid) - before[name]) * 1000 / result.count for name, pid in processes.items()
    }
    return result, failures, cpu_ms


async def measure_confirms(amqp_url: str, exchange: str, agent_id: uuid.UUID) -> LoadResult:
    """The floor under every token: a confirmed `session.requested` alone, same broker and queue."""
    bus = Bus(amqp_url, exchange=exchange)
    await bus.connect()

    async def publish() -> None:
        await bus.publish(
            SessionRequested(
                agent_id=agent_id,
                org_id=agent_id,
                session_id=uuid.uuid4(),
                data=SessionRequestedData(
                    kind="test",
                    room_name=new_test_room(agent_id).name,
                    expires_at=datetime.now(UTC) + timedelta(minutes=10),
                ),
            )
        )

    try:
        await run_load(publish, total=WARM_UP, concurrency=CONCURRENCY)
        return await run_load(publish, total=REQUESTS, concurrency=CONCURRENCY)
    finally:
        await bus.close()


def _pid(service: ServiceProcess) -> int:
    assert service.process is not None and service.process.process is not None
    return service.process.process.pid


async def run() -> list[dict[str, Any]]:
    configure_logging(service="bench", json=False, level="WARNING")
    broker = RabbitMQServer(base_dir=make_base_dir("bench-rabbitmq"))
    redis = RedisServer(base_dir=make_base_dir("bench-redis"))
    await asyncio.gather(asyncio.to_thread(broker.start), asyncio.to_thread(redis.start))
    registry = RegistryService(
        amqp_url=broker.url,
        redis_url=redis.url,
        exchange="bench-tokens",
        base_dir=make_base_dir("bench-registry"),
    )
    credentials = new_livekit_credentials()
    tokens = TokenServiceProcess(
        registry=registry,
        livekit_url="ws://127.0.0.1:7880",
        livekit_api_key=credentials.api_key,
        livekit_api_secret=credentials.api_secret,
        base_dir=make_base_dir("bench-token-service"),
        extra_env={"RATE_LIMIT_REQUESTS": str(10 * (WARM_UP + REQUESTS))},
    )
    try:
        await asyncio.to_thread(registry.prepare)
        await asyncio.to_thread(registry.start)
        tenant = await asyncio.to_thread(registry.new_tenant)
        user_token = await asyncio.to_thread(registry.login, tenant.user.email, tenant.user.password)
        await asyncio.to_thread(tokens.start)
        # aiohttp, not httpx: httpx's pool costs more CPU per request than the server under test.
        async with aiohttp.ClientSession(
            base_url=tokens.url,
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as client:
            processes = {
                "token_service": _pid(tokens),
                "registry": _pid(registry),
                "load_generator": os.getpid(),
            }
            bare, bare_failures, bare_cpu = await measure(client, "GET", "/healthz", processes=processes)
            issued, issue_failures, issue_cpu = await measure(
                client,
                "POST",
                f"/api/v1/agents/{tenant.agent_id}/test-token",
                processes=processes,
                headers={"Authorization": f"Bearer {user_token}"},
            )
        confirms = await measure_confirms(broker.url, registry.exchange, tenant.agent_id)
    finally:
        await asyncio.to_thread(tokens.stop)
        await asyncio.to_thread(registry.stop)
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(broker.close)
        for path in (redis.base_dir, registry.base_dir, tokens.base_dir):
            shutil.rmtree(path, ignore_errors=True)
    ratio = issued.per_second / bare.per_second
    cpu_records = [
        record(f"token_service.{phase}.cpu.{name}", value, "ms/req")
        for phase, used in (("healthz", bare_cpu), ("test_token", issue_cpu))
        for name, value in used.items()
    ]
    return [
        record("token_service.healthz.throughput", bare.per_second, "req/s"),
        record("token_service.healthz.p50", bare.p50, "ms"),
        record("token_service.healthz.p99", bare.p99, "ms"),
        record("token_service.test_token.throughput", issued.per_second, "tokens/s"),
        record("token_service.healthz.failed", bare_failures, "requests"),
        record("token_service.test_token.p50", issued.p50, "ms"),
        record("token_service.publish_confirmed_alone.throughput", confirms.per_second, "msg/s"),
        record("token_service.publish_confirmed_alone.p50", confirms.p50, "ms"),
        record("token_service.publish_confirmed_alone.p99", confirms.p99, "ms"),
        record(
            "token_service.test_token.p99",
            issued.p99,
            "ms",
            goal=f"< {GOAL_P99_MS:g} ms",
            met=issued.p99 < GOAL_P99_MS,
        ),
        record(
            "token_service.test_token.vs_healthz",
            ratio,
            "x",
            goal=f">= {GOAL_RATIO}x bare",
            met=ratio >= GOAL_RATIO,
        ),
        record(
            "token_service.test_token.refused",
            issue_failures,
            "requests",
            goal="0 (a 503 means an unconfirmed publish)",
            met=issue_failures == 0,
        ),
        *cpu_records,
    ]
