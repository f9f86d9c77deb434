"""The outbox relay against a real RabbitMQ, a SQLite file and PostgreSQL: batches published together,
failures kept, and a database outage survived."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from agentline_common.bus import Bus
from agentline_common.events import Event, SessionRequested
from agentline_common.outbox import MAX_RETRY_SECONDS, OutboxRelay, add_to_outbox, outbox_table, retry_delay
from agentline_common.processed_events import InMemoryProcessedEvents
from agentline_common.testing.servers import free_port
from sqlalchemy import MetaData, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .test_bus import session_requested

pytestmark = pytest.mark.integration

BATCH_SIZE = 100


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Table]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/outbox-{secrets.token_hex(4)}.db")
    metadata = MetaData()
    table = outbox_table(metadata)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine, table
    await engine.dispose()


async def stored(engine: AsyncEngine, table: Table, count: int) -> list[SessionRequested]:
    """`count` events committed to the outbox, one transaction each, in this order."""
    events = [session_requested() for _ in range(count)]
    for event in events:
        async with engine.begin() as connection:
            await add_to_outbox(connection, table, event)
    return events


class Received:
    """Events consumed from the bus; `arrived` is set once `expected` of them are in."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.events: list[Event] = []
        self.arrived = asyncio.Event()

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        if len(self.events) >= self.expected:
            self.arrived.set()


async def consume(bus: Bus, expected: int) -> Received:
    received = Received(expected)
    await bus.consume(
        queue=f"test-outbox-{secrets.token_hex(6)}",
        routing_keys=["session.requested"],
        handler=received.handle,
        processed=InMemoryProcessedEvents(),
    )
    return received


async def test_every_row_of_several_batches_is_published_once(
    store: tuple[AsyncEngine, Table], bus: Bus
) -> None:
    engine, table = store
    consumer = await consume(bus, 2 * BATCH_SIZE + 30)
    events = await stored(engine, table, consumer.expected)
    relay = OutboxRelay(engine=engine, table=table, bus=bus, batch_size=BATCH_SIZE)

    assert await relay.relay_once() == len(events)
    await asyncio.wait_for(consumer.arrived.wait(), 30)
    assert sorted(event.id for event in consumer.events) == sorted(event.id for event in events)
    assert await relay.pending() == 0
    assert relay.failures == 0
    assert await relay.relay_once() == 0


async def test_broker_unreachable_keeps_the_batch_pending_with_its_error(
    store: tuple[AsyncEngine, Table], amqp_url: str
) -> None:
    engine, table = store
    events = await stored(engine, table, BATCH_SIZE + 5)
    never_connected = Bus(amqp_url, exchange=f"test-{secrets.token_hex(6)}")
    relay = OutboxRelay(engine=engine, table=table, bus=never_connected, batch_size=BATCH_SIZE)

    assert await relay.relay_once() == 0
    assert relay.failures == 1  # one failed pass: it stops at the first batch, the rest waits
    assert await relay.pending() == len(events)
    async with engine.connect() as connection:
        rows = (await connection.execute(select(table.c.attempts, table.c.last_error))).all()
    attempted = [row for row in rows if row.attempts == 1]
    assert len(attempted) == BATCH_SIZE
    assert all("not connected" in row.last_error for row in attempted)
    assert all(row.attempts == 0 and row.last_error is None for row in rows if row not in attempted)


class MovableDatabase:
    """Connects the relay's engine wherever `dsn` points now: first a refused port, later PostgreSQL.

    The driver is asyncpg, as in production; a refused connection surfaces from it as a plain
    ConnectionRefusedError (an OSError), not as a SQLAlchemy error.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.attempts = 0

    async def connect(self) -> asyncpg.Connection:
        self.attempts += 1
        return await asyncpg.connect(self.dsn, timeout=5)


async def test_the_relay_survives_a_refused_database_and_delivers_once_it_is_back(
    postgres_database: str, bus: Bus
) -> None:
    engine = create_async_engine(postgres_database)
    metadata = MetaData()
    table = outbox_table(metadata)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    events = await stored(engine, table, 5)
    await engine.dispose()
    consumer = await consume(bus, len(events))
    database = MovableDatabase(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    relay_engine = create_async_engine("postgresql+asyncpg://", async_creator=database.connect)
    relay = OutboxRelay(engine=relay_engine, table=table, bus=bus, poll_seconds=0.05)
    relay.start()
    try:
        async with asyncio.timeout(10):  # a second attempt: the relay outlived the first refusal
            while database.attempts < 2:
                await asyncio.sleep(0.02)
        database.dsn = postgres_database.replace("postgresql+asyncpg://", "postgresql://", 1)
        await asyncio.wait_for(consumer.arrived.wait(), 30)
    finally:
        await relay.stop()
        await relay_engine.dispose()

    assert sorted(event.id for event in consumer.events) == sorted(event.id for event in events)


@pytest.mark.unit
def test_the_wait_after_failures_grows_and_is_bounded() -> None:
    assert [retry_delay(0.5, failed) for failed in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(0.5, 1_000) == MAX_RETRY_SECONDS
    assert retry_delay(30.0, 3) == 30.0  # never shorter than the poll interval
