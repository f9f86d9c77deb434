"""The outbox relay against a real RabbitMQ and a SQLite file: batches published together, failures kept."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentline_common.bus import Bus
from agentline_common.events import Event, SessionRequested
from agentline_common.outbox import OutboxRelay, add_to_outbox, outbox_table
from agentline_common.processed_events import InMemoryProcessedEvents
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


async def test_every_row_of_several_batches_is_published_once(
    store: tuple[AsyncEngine, Table], bus: Bus
) -> None:
    engine, table = store
    received: list[Event] = []
    arrived = asyncio.Event()

    async def handle(event: Event) -> None:
        received.append(event)
        if len(received) == len(events):
            arrived.set()

    await bus.consume(
        queue=f"test-outbox-{secrets.token_hex(6)}",
        routing_keys=["session.requested"],
        handler=handle,
        processed=InMemoryProcessedEvents(),
    )
    events = await stored(engine, table, 2 * BATCH_SIZE + 30)
    relay = OutboxRelay(engine=engine, table=table, bus=bus, batch_size=BATCH_SIZE)

    assert await relay.relay_once() == len(events)
    await asyncio.wait_for(arrived.wait(), 30)
    assert sorted(event.id for event in received) == sorted(event.id for event in events)
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
