"""Publish-with-confirm throughput and request/reply round trips: libs/common next to bare aio-pika.

Both sides use the same broker, the same message shape and the same concurrency in one run, so the
ratio isolates what our bus adds (event encoding, headers, error mapping, idempotency bookkeeping).
The two sides alternate for a few rounds, and each side's rounds are pooled (all its messages over
all its time, all its latencies): with one round each, the ratios of back-to-back runs on the
development VM ranged from 0.89x to 1.56x.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from typing import Any

import aio_pika
from agentline_common.bus import Bus
from agentline_common.events import AgentChanged, AgentChangedData, encode_event
from agentline_common.logging import configure_logging
from agentline_common.testing.bench import LoadResult, record, run_load
from agentline_common.testing.servers import RabbitMQServer, make_base_dir

PUBLISHES = 4000
PUBLISH_CONCURRENCY = 32
REQUESTS = 2000
GOAL_RATIO = 1.25
ROUNDS = 3


def new_event() -> AgentChanged:
    return AgentChanged(agent_id=uuid.uuid4(), data=AgentChangedData(change="updated"))


async def bench_ours(url: str) -> tuple[LoadResult, LoadResult]:
    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    server, client = Bus(url, exchange=exchange), Bus(url, exchange=exchange)
    await server.connect()
    await client.connect()
    try:
        sink = await _declare_sink(url, exchange)

        async def publish() -> None:
            await client.publish(new_event())

        publishing = await run_load(publish, total=PUBLISHES, concurrency=PUBLISH_CONCURRENCY)

        async def answer(params: dict[str, Any]) -> dict[str, Any]:
            return {"id": params["id"], "active": True}

        await server.serve(queue=f"{exchange}.rpc", methods={"agent.get": answer})

        async def request() -> None:
            await client.request("agent.get", {"id": str(uuid.uuid4())})

        await run_load(request, total=100, concurrency=1)
        requesting = await run_load(request, total=REQUESTS, concurrency=1)
        await sink.close()
        return publishing, requesting
    finally:
        await client.close()
        await server.close()


async def _declare_sink(url: str, exchange: str) -> aio_pika.abc.AbstractConnection:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.declare_queue(f"{exchange}.sink", auto_delete=True, arguments={"x-max-length": 1})
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    await queue.bind(exchange, "#")
    return connection


async def bench_bare(url: str) -> tuple[LoadResult, LoadResult]:
    exchange_name = f"bench-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(url)
    sink = await _declare_sink(url, exchange_name)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)

        async def publish() -> None:
            event = new_event()
            await exchange.publish(
                aio_pika.Message(
                    encode_event(event),
                    message_id=str(event.id),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                ),
                routing_key=event.type,
                mandatory=True,
            )

        publishing = await run_load(publish, total=PUBLISHES, concurrency=PUBLISH_CONCURRENCY)
        requesting = await _bare_rpc(connection, exchange, exchange_name)
        return publishing, requesting
    finally:
        await sink.close()
        await connection.close()


async def _bare_rpc(
    connection: aio_pika.abc.AbstractRobustConnection,
    exchange: aio_pika.abc.AbstractExchange,
    exchange_name: str,
) -> LoadResult:
    server_channel = await connection.channel()
    requests = await server_channel.declare_queue(f"{exchange_name}.rpc", auto_delete=True)
    await requests.bind(exchange_name, "rpc.agent.get")

    async def respond(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            params = json.loads(message.body)["params"]
            await server_channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps({"ok": True, "result": {"id": params["id"], "active": True}}).encode(),
                    correlation_id=message.correlation_id,
                ),
                routing_key=message.reply_to or "",
            )

    await requests.consume(respond)
    client_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    replies = await client_channel.declare_queue("", exclusive=True, auto_delete=True)
    pending: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = pending.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(message.body)

    await replies.consume(on_reply, no_ack=True)

    async def request() -> None:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pending[correlation_id] = future
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"params": {"id": str(uuid.uuid4())}}).encode(),
                correlation_id=correlation_id,
                reply_to=replies.name,
            ),
            routing_key="rpc.agent.get",
        )
        await asyncio.wait_for(future, 2.0)

    await run_load(request, total=100, concurrency=1)
    return await run_load(request, total=REQUESTS, concurrency=1)


def pooled(results: Iterable[LoadResult]) -> LoadResult:
    rounds = list(results)
    return LoadResult(
        count=sum(result.count for result in rounds),
        seconds=sum(result.seconds for result in rounds),
        latencies_ms=[latency for result in rounds for latency in result.latencies_ms],
    )


async def run() -> list[dict[str, Any]]:
    configure_logging(service="bench", json=False, level="WARNING")
    broker = RabbitMQServer(base_dir=make_base_dir("bench-rabbitmq"))
    await asyncio.to_thread(broker.start)
    bare: list[tuple[LoadResult, LoadResult]] = []
    ours: list[tuple[LoadResult, LoadResult]] = []
    try:
        for _ in range(ROUNDS):
            bare.append(await bench_bare(broker.url))
            ours.append(await bench_ours(broker.url))
    finally:
        await asyncio.to_thread(broker.close)
    bare_publish, bare_rpc = pooled(publishing for publishing, _ in bare), pooled(rpc for _, rpc in bare)
    ours_publish, ours_rpc = pooled(publishing for publishing, _ in ours), pooled(rpc for _, rpc in ours)
    throughput_ratio = bare_publish.per_second / ours_publish.per_second
    p99_ratio = ours_rpc.p99 / bare_rpc.p99
    goal = f"<= {GOAL_RATIO}x bare"
    return [
        record("bus.publish_confirmed.bare_aio_pika", bare_publish.per_second, "msg/s"),
        record("bus.publish_confirmed.agentline", ours_publish.per_second, "msg/s"),
        record(
            "bus.publish_confirmed.slowdown_vs_bare",
            throughput_ratio,
            "x",
            goal=goal,
            met=throughput_ratio <= GOAL_RATIO,
        ),
        record("bus.rpc.bare_aio_pika.p50", bare_rpc.p50, "ms"),
        record("bus.rpc.bare_aio_pika.p99", bare_rpc.p99, "ms"),
        record("bus.rpc.agentline.p50", ours_rpc.p50, "ms"),
        record("bus.rpc.agentline.p99", ours_rpc.p99, "ms"),
        record("bus.rpc.p99_vs_bare", p99_ratio, "x", goal=goal, met=p99_ratio <= GOAL_RATIO),
    ]
