"""Where the gateway keeps what it must not forget: each CallSid's answer, and the event outbox.

Events go through the shared transactional outbox of libs/common (a table, SQLite by default,
PostgreSQL when several replicas share the work), with ids derived from the CallSid: the table's
primary key turns a second `session.requested` or `session.ended` for a call into a no-op, whatever
races or retries happen. Answers go to Redis (SET NX, kept a day) so a retried webhook gets the first
answer without a database round trip; if that record were lost, the retry computes the same answer
and the outbox still refuses the duplicate event. The outbox table is created at start-up
(`create_schema`); it moves to migrations with its first change.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import structlog
from agentline_common.events import SessionEnded, SessionRequested
from agentline_common.outbox import add_to_outbox, outbox_table
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import MetaData, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentline_telephony.service import Answer, CallSession, IncomingCall

log = structlog.get_logger()

metadata = MetaData()
outbox = outbox_table(metadata, "telephony_outbox")

ANSWER_KEY_PREFIX = "agentline:telephony:call:"


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`.

    SQLite gets one connection, in WAL mode: SQLite takes one writer at a time anyway, and queueing
    for the connection in asyncio is far cheaper than SQLite's busy handler, which sleeps in steps of
    milliseconds when concurrent webhooks contend for the write lock.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=10, connect_args={"timeout": 10}
        )

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


class CallStore:
    """The `CallStore` of the service: answers in Redis, events in the SQL outbox."""

    def __init__(self, *, engine: AsyncEngine, redis: Redis, answer_ttl_seconds: int) -> None:
        self._engine = engine
        self._redis = redis
        self._ttl = answer_ttl_seconds

    async def answer_of(self, call_sid: str) -> str | None:
        record = await self._record(call_sid)
        return str(record["twiml"]) if record else None

    async def remember(self, call: IncomingCall, answer: Answer) -> str:
        if not answer.remembered:
            return answer.twiml
        if answer.event is not None:
            await self._queue(answer.event)
        agent = answer.agent
        record = {
            "twiml": answer.twiml,
            "outcome": answer.outcome.value,
            "agent_id": str(agent.id) if agent else None,
            "org_id": str(agent.org_id) if agent else None,
            "session": answer.event is not None,
        }
        try:
            stored = await self._redis.set(_key(call.call_sid), json.dumps(record), nx=True, ex=self._ttl)
        except RedisError as error:
            log.warning("calls.answer_not_stored", call_sid=call.call_sid, error=type(error).__name__)
            return answer.twiml
        if stored:
            return answer.twiml
        # A concurrent retry of the same webhook stored its answer first: give the same one.
        return await self.answer_of(call.call_sid) or answer.twiml

    async def session_of(self, call_sid: str) -> CallSession | None:
        record = await self._record(call_sid)
        if not record or not record.get("session"):
            return None
        return CallSession(agent_id=uuid.UUID(record["agent_id"]), org_id=uuid.UUID(record["org_id"]))

    async def end_unreached(self, event: SessionEnded) -> bool:
        return await self._queue(event)

    async def _record(self, call_sid: str) -> dict[str, Any] | None:
        try:
            raw = await self._redis.get(_key(call_sid))
        except RedisError as error:
            log.warning("calls.answer_unreadable", call_sid=call_sid, error=type(error).__name__)
            return None
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        return record

    async def _queue(self, event: SessionRequested | SessionEnded) -> bool:
        """Add `event` to the outbox; False when an event with its id is already there."""
        try:
            async with self._engine.begin() as connection:
                await add_to_outbox(connection, outbox, event)
        except IntegrityError:
            return False
        return True


def _key(call_sid: str) -> str:
    return ANSWER_KEY_PREFIX + call_sid
