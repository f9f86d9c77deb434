"""The gateway's own small database: the answer given to each CallSid, and the event outbox.

One transaction stores a call's answer and its `session.requested` event (the shared outbox of
libs/common), so a retried webhook can never publish a second session and an answered call can never
lose its event, whatever the broker is doing. SQLite by default; PostgreSQL when several replicas
share the work. The tables are created at start-up (`create_schema`): two append-mostly tables whose
shape has not changed yet; they move to migrations with their first change.
"""

from __future__ import annotations

import uuid
from typing import Any

from agentline_common.events import SessionEnded, utc_now
from agentline_common.outbox import add_to_outbox, outbox_table
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    event,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentline_telephony.service import Answer, CallSession, IncomingCall

metadata = MetaData()

calls = Table(
    "telephony_calls",
    metadata,
    Column("call_sid", String(64), primary_key=True),
    Column("outcome", String(32), nullable=False),
    Column("twiml", Text, nullable=False),
    Column("to_number", String(64), nullable=False),
    Column("from_number", String(64), nullable=False),
    Column("agent_id", Uuid, nullable=True),
    Column("org_id", Uuid, nullable=True),
    Column("session_id", Uuid, nullable=True, comment="set when the call was bridged to an agent"),
    Column("ended_status", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

outbox = outbox_table(metadata, "telephony_outbox")


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`; SQLite gets WAL and a busy timeout so concurrent webhooks queue, not fail."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 10})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


class SqlCallStore:
    """The `CallStore` of the service, on SQLAlchemy Core."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def answer_of(self, call_sid: str) -> str | None:
        async with self._engine.connect() as connection:
            row = await connection.execute(select(calls.c.twiml).where(calls.c.call_sid == call_sid))
            return row.scalar_one_or_none()

    async def remember(self, call: IncomingCall, answer: Answer) -> str:
        if not answer.remembered:
            return answer.twiml
        agent = answer.agent
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    calls.insert().values(
                        call_sid=call.call_sid,
                        outcome=answer.outcome.value,
                        twiml=answer.twiml,
                        to_number=call.to_number,
                        from_number=call.from_number,
                        agent_id=agent.id if agent else None,
                        org_id=agent.org_id if agent else None,
                        session_id=answer.event.session_id if answer.event else None,
                        created_at=utc_now(),
                    )
                )
                if answer.event is not None:
                    await add_to_outbox(connection, outbox, answer.event)
        except IntegrityError:
            # A concurrent retry of the same webhook stored its answer first: give the same one.
            earlier = await self.answer_of(call.call_sid)
            if earlier is None:
                raise
            return earlier
        return answer.twiml

    async def session_of(self, call_sid: str) -> CallSession | None:
        async with self._engine.connect() as connection:
            result = await connection.execute(
                select(calls.c.agent_id, calls.c.org_id).where(
                    calls.c.call_sid == call_sid, calls.c.session_id.is_not(None)
                )
            )
            row = result.one_or_none()
        if row is None or row.agent_id is None or row.org_id is None:
            return None
        return CallSession(agent_id=_uuid(row.agent_id), org_id=_uuid(row.org_id))

    async def end_unreached(self, call_sid: str, status: str, event: SessionEnded) -> bool:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(calls)
                .where(
                    calls.c.call_sid == call_sid,
                    calls.c.session_id.is_not(None),
                    calls.c.ended_status.is_(None),
                )
                .values(ended_status=status)
            )
            if result.rowcount != 1:
                return False
            await add_to_outbox(connection, outbox, event)
        return True


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
