"""The outbox writer on real databases: concurrent webhooks' events committed together, each once.

SQLite (the default, written from a thread of its own) and PostgreSQL (through the async engine)
take different paths; both must store rows the shared relay reads back and publishes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from agentline_common.events import SessionEnded, SessionEndedData, parse_event
from agentline_telephony.repository import OutboxWriter, create_engine, create_schema, outbox
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.integration


def ended(event_id: uuid.UUID) -> SessionEnded:
    return SessionEnded(
        id=event_id,
        org_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        data=SessionEndedData(reason="call_failed", detail="twilio call status: busy"),
    )


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/telephony.db"
    else:
        url = request.getfixturevalue("postgres_database")
    engine = create_engine(url)
    await create_schema(engine)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[OutboxWriter]:
    writer = OutboxWriter(engine=engine, table=outbox)
    yield writer
    await writer.close()


async def stored_events(engine: AsyncEngine) -> dict[uuid.UUID, SessionEnded]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(outbox.c.id, outbox.c.body, outbox.c.sent_at))).all()
    assert all(row.sent_at is None for row in rows)
    events = {row.id: parse_event(row.body) for row in rows}
    assert all(isinstance(event, SessionEnded) for event in events.values())
    return events  # type: ignore[return-value]


async def test_concurrent_events_are_all_stored_and_readable_through_the_engine(
    engine: AsyncEngine, writer: OutboxWriter
) -> None:
    events = [ended(uuid.uuid4()) for _ in range(50)]

    results = await asyncio.gather(*(writer.add(event) for event in events))

    assert results == [True] * 50
    stored = await stored_events(engine)
    assert stored == {event.id: event for event in events}


async def test_an_event_stored_before_is_refused_and_kept_once(
    engine: AsyncEngine, writer: OutboxWriter
) -> None:
    event_id = uuid.uuid4()
    assert await writer.add(ended(event_id)) is True

    again = await writer.add(ended(event_id))

    assert again is False
    assert list(await stored_events(engine)) == [event_id]


async def test_a_duplicate_in_the_same_batch_is_stored_once_and_reported_once(
    engine: AsyncEngine, writer: OutboxWriter
) -> None:
    """A retried webhook racing its original: one of them queues the event, the other learns it did not."""
    event_id, other_id = uuid.uuid4(), uuid.uuid4()

    results = await asyncio.gather(
        writer.add(ended(other_id)), writer.add(ended(event_id)), writer.add(ended(event_id))
    )

    assert sorted(results) == [False, True, True]
    assert results[0] is True
    assert sorted(map(str, await stored_events(engine))) == sorted([str(event_id), str(other_id)])
