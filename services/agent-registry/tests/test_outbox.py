"""agent.changed through the transactional outbox, on the real broker: nothing lost, nothing invented."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import aio_pika
import pytest
import pytest_asyncio
from agentline_common.bus import Bus
from agentline_common.events import AgentChanged, parse_event
from agentline_common.outbox import OutboxRelay
from agentline_registry import service
from agentline_registry.schemas import AgentCreate
from agentline_registry.tables import OUTBOX

from .conftest import Database

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


class Captured:
    def __init__(self) -> None:
        self.events: asyncio.Queue[AgentChanged] = asyncio.Queue()

    async def next(self, timeout: float = 5.0) -> AgentChanged:
        return await asyncio.wait_for(self.events.get(), timeout)


@pytest_asyncio.fixture(loop_scope="session")
async def captured(amqp_url: str, bus: Bus) -> AsyncIterator[Captured]:
    """Every agent.changed published on the test's exchange, as a test-side consumer sees it."""
    capture = Captured()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(bus.exchange_name, "agent.changed")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = parse_event(message.body)
            assert isinstance(event, AgentChanged)
            await capture.events.put(event)

    await queue.consume(on_message)
    try:
        yield capture
    finally:
        await connection.close()


def _relay(database: Database, bus: Bus) -> OutboxRelay:
    return OutboxRelay(engine=database.engine, table=OUTBOX, bus=bus, poll_seconds=0.1)


async def test_process_dies_after_commit_and_the_next_relay_publishes(
    database: Database, bus: Bus, captured: Captured
) -> None:
    """The command line commits an agent and exits without publishing (as a crash right after the
    commit would); the relay of the next process finds the row and publishes it, exactly once."""
    async with database.sessions() as session:
        user = await service.create_user(session, email="crash@example.test", password="long-password")
        org = await service.create_org(session, owner=user.id, name="Org")
        await session.commit()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentline_registry",
        "create-agent",
        "--org",
        str(org.id),
        "--name",
        "a",
        env={**os.environ, "DATABASE_URL": database.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert "agent_id" in stdout.decode().splitlines()[-1]
    relay = _relay(database, bus)
    assert await relay.pending() == 1
    assert captured.events.empty()

    assert await relay.relay_once() == 1
    event = await captured.next()
    assert event.data.change == "created"
    assert event.org_id == org.id
    assert await relay.pending() == 0
    assert await relay.relay_once() == 0


async def test_broker_unreachable_keeps_events_until_it_is_back(
    database: Database, bus: Bus, captured: Captured, amqp_url: str
) -> None:
    async with database.sessions() as session:
        user = await service.create_user(session, email="down@example.test", password="long-password")
        org = await service.create_org(session, owner=user.id, name="Org")
        agent = await service.create_agent(session, actor=user.id, org_id=org.id, spec=AgentCreate(name="a"))
        await service.set_active(session, actor=user.id, agent_id=agent.id, active=False)
        await session.commit()

    disconnected = Bus(amqp_url, exchange=bus.exchange_name)  # never connected: every publish fails
    failing = _relay(database, disconnected)
    assert await failing.relay_once() == 0
    assert failing.failures == 1
    assert await failing.pending() == 2

    relay = _relay(database, bus)
    relay.start()
    try:
        first, second = await captured.next(), await captured.next()
    finally:
        await relay.stop()
    assert [first.data.change, second.data.change] == ["created", "updated"]
    assert first.agent_id == second.agent_id == agent.id
    assert await relay.pending() == 0
