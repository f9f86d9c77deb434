"""The test fixtures start real servers that answer on loopback, and a restart keeps the data."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import aio_pika
import pytest
import redis.asyncio as aioredis
from agentline_common.bus import Bus
from agentline_common.testing.servers import RabbitMQServer, free_port, free_udp_port_range
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def _first_ephemeral_port() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_lie_below_the_ephemeral_range_so_no_client_can_take_them_as_its_source() -> None:
    ports = [free_port() for _ in range(50)]
    assert max(ports) < _first_ephemeral_port()
    assert len(set(ports)) == len(ports)
    for port in ports:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))


def test_a_udp_port_run_is_below_the_ephemeral_range_and_never_overlaps_a_port_handed_out() -> None:
    single = {free_port() for _ in range(20)}
    first, last = free_udp_port_range(20)
    assert last - first == 19
    assert last < _first_ephemeral_port()
    assert single.isdisjoint(range(first, last + 1))


@pytest.mark.integration
async def test_redis_url_answers(redis_url: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    client = aioredis.from_url(redis_url)
    key = f"test:{uuid.uuid4()}"
    await client.set(key, "value")
    assert await client.get(key) == b"value"
    await client.aclose()


@pytest.mark.integration
async def test_postgres_database_is_fresh_and_empty(postgres_database: str) -> None:
    assert postgres_database.startswith("postgresql+asyncpg://")
    engine = create_async_engine(postgres_database)
    async with engine.begin() as connection:
        tables = await connection.scalar(
            text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        )
        await connection.execute(text("CREATE TABLE probe (id int primary key)"))
    await engine.dispose()
    assert tables == 0


@pytest.mark.integration
async def test_each_test_gets_its_own_database(postgres_database: str, postgres_url: str) -> None:
    assert postgres_database == postgres_url
    engine = create_async_engine(postgres_database)
    async with engine.connect() as connection:
        name = await connection.scalar(text("SELECT current_database()"))
    await engine.dispose()
    assert name is not None
    assert name.startswith("test_")


@pytest.mark.integration
async def test_bus_fixture_is_connected_on_a_unique_exchange(bus: Bus) -> None:
    assert bus.is_connected
    assert bus.exchange_name.startswith("test-")


@pytest.mark.integration
async def test_rabbitmq_restart_keeps_durable_queue_and_persistent_messages(
    rabbitmq: RabbitMQServer,
) -> None:
    queue_name = f"test-restart-{uuid.uuid4().hex}"
    body = uuid.uuid4().bytes
    connection = await aio_pika.connect(rabbitmq.url)
    channel = await connection.channel()
    await channel.declare_queue(queue_name, durable=True)
    await channel.default_exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=queue_name,
    )
    await connection.close()

    rabbitmq.stop()
    rabbitmq.start()

    connection = await aio_pika.connect(rabbitmq.url)
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, durable=True, passive=True)
    message = await queue.get(timeout=5)
    assert message is not None
    assert message.body == body
    await message.ack()
    await queue.delete()
    await connection.close()
