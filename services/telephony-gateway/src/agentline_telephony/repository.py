"""Where the gateway keeps what it must not forget: each CallSid's answer, and the event outbox.

Events go through the shared transactional outbox of libs/common (a table, SQLite by default,
PostgreSQL when several replicas share the work), with ids derived from the CallSid: the table's
primary key turns a second `session.requested` or `session.ended` for a call into a no-op, whatever
races or retries happen. Concurrent webhooks' events are committed together (`OutboxWriter`).
Answers go to Redis (SET NX, kept a day) so a retried webhook gets the first answer without a
database round trip; if that record were lost, the retry computes the same answer
and the outbox still refuses the duplicate event. The outbox table is created at start-up
(`create_schema`); it moves to migrations with its first change.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy
import structlog
from agentline_common.events import SessionEnded, SessionRequested
from agentline_common.outbox import outbox_row, outbox_table
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import MetaData, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import ReturningInsert

from agentline_telephony.coalescing import Coalescer
from agentline_telephony.service import Answer, CallSession, CallStoreUnavailable, IncomingCall

log = structlog.get_logger()

metadata = MetaData()
outbox = outbox_table(metadata, "telephony_outbox")

ANSWER_KEY_PREFIX = "agentline:telephony:call:"
CONNECT_TIMEOUT_SECONDS = 3.0
COMMAND_TIMEOUT_SECONDS = 5.0
POOL_TIMEOUT_SECONDS = 3.0


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`.

    SQLite gets one connection, in WAL mode: SQLite takes one writer at a time anyway, and queueing
    for the connection in asyncio is far cheaper than SQLite's busy handler, which sleeps in steps of
    milliseconds when concurrent webhooks contend for the write lock. (The webhooks' own inserts go
    through `OutboxWriter`, in batches.)
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=10, connect_args={"timeout": 10}
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=_bounded_connect_args(url),
    )


def _bounded_connect_args(url: str) -> dict[str, float]:
    """asyncpg waits 60 s for a connection and forever for a query by default; a database that
    accepts connections but never replies would hold every webhook and the relay that long."""
    if url.startswith("postgresql+asyncpg"):
        return {"timeout": CONNECT_TIMEOUT_SECONDS, "command_timeout": COMMAND_TIMEOUT_SECONDS}
    return {}


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_file_engine(engine: AsyncEngine) -> sqlalchemy.Engine | None:
    """A synchronous engine on the SQLite file of `engine`; None for other databases (or memory)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    sync_engine = sqlalchemy.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        pool_size=1,
        max_overflow=0,
        connect_args={"timeout": 10, "check_same_thread": False},
    )
    event.listen(sync_engine, "connect", _sqlite_pragmas)
    return sync_engine


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


def insert_new_rows(engine: AsyncEngine, table: Table) -> ReturningInsert[tuple[uuid.UUID]]:
    """INSERT that skips rows whose id is already there and returns the ids it did insert."""
    if engine.dialect.name == "postgresql":
        on_postgresql = postgresql.insert(table).on_conflict_do_nothing(index_elements=[table.c.id])
        return on_postgresql.returning(table.c.id)
    on_sqlite = sqlite.insert(table).on_conflict_do_nothing(index_elements=[table.c.id])
    return on_sqlite.returning(table.c.id)


class OutboxWriter:
    """Group commit of outbox rows: every row waits for the commit that contains it.

    A webhook may only answer once its event is durably stored; the rows of concurrent webhooks are
    committed in one transaction (`Coalescer`), so a burst of webhooks costs a few commits, and a lone
    webhook still commits at once.

    On SQLite the transaction runs whole in a thread of its own, on a connection of its own: through
    aiosqlite each statement, cursor, commit and pool reset is a separate hop to its thread and back,
    and on a busy machine every hop waits to be scheduled, so a commit of a few rows took tens of
    milliseconds. One hop per batch is what remains. (WAL lets the relay's connection read meanwhile;
    its rare writes and ours wait for each other in SQLite's busy handler, in threads, not the loop.)
    """

    def __init__(self, *, engine: AsyncEngine, table: Table) -> None:
        self._engine = engine
        self._insert = insert_new_rows(engine, table)
        self._sqlite = sqlite_file_engine(engine)
        self._sqlite_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        self._commits: Coalescer[dict[str, object], bool] = Coalescer(self._commit, name="outbox-commit")

    async def add(self, event: SessionRequested | SessionEnded) -> bool:
        """Store `event` durably; False when an event with its id was stored before.

        Raises what the database raised when the commit that holds the row fails.
        """
        return await self._commits.submit(outbox_row(event))

    async def close(self) -> None:
        await self._commits.close()
        self._sqlite_thread.shutdown(wait=True)
        if self._sqlite is not None:
            self._sqlite.dispose()

    async def _commit(self, rows: list[dict[str, object]]) -> list[bool]:
        unique = list({row["id"]: row for row in rows}.values())
        if self._sqlite is not None:
            loop = asyncio.get_running_loop()
            inserted = await loop.run_in_executor(self._sqlite_thread, self._insert_into_sqlite, unique)
        else:
            async with self._engine.begin() as connection:
                inserted = set((await connection.execute(self._insert, unique)).scalars())
        claimed: set[object] = set()
        stored = []
        for row in rows:
            # Of rows with the same id in one batch (a retry racing its original), the first wins.
            stored.append(row["id"] in inserted and row["id"] not in claimed)
            claimed.add(row["id"])
        return stored

    def _insert_into_sqlite(self, rows: list[dict[str, object]]) -> set[object]:
        assert self._sqlite is not None
        with self._sqlite.begin() as connection:
            return set(connection.execute(self._insert, rows).scalars())


class RedisOutboxCallStore:
    """The service's `CallStore`: answers in Redis, events in the SQL outbox.

    Concurrent webhooks' reads go to Redis as one MGET, and their writes as one pipeline.
    """

    def __init__(self, *, outbox: OutboxWriter, redis: Redis, answer_ttl_seconds: int) -> None:
        self._outbox = outbox
        self._redis = redis
        self._ttl = answer_ttl_seconds
        self._reads: Coalescer[str, bytes | str | None] = Coalescer(self._get_many, name="answers-read")
        self._writes: Coalescer[tuple[str, str], bool] = Coalescer(self._set_new, name="answers-write")

    async def close(self) -> None:
        await self._reads.close()
        await self._writes.close()

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
            stored = await self._writes.submit((_key(call.call_sid), json.dumps(record)))
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
            raw = await self._reads.submit(_key(call_sid))
        except RedisError as error:
            log.warning("calls.answer_unreadable", call_sid=call_sid, error=type(error).__name__)
            return None
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        return record

    async def _queue(self, event: SessionRequested | SessionEnded) -> bool:
        """Add `event` to the outbox; False when an event with its id is already there.

        Raises CallStoreUnavailable when the database fails: the caller must not be bridged on an event
        that may be lost, yet Twilio must still get TwiML, not a 500.
        """
        try:
            return await self._outbox.add(event)
        except (SQLAlchemyError, OSError) as error:
            raise CallStoreUnavailable(f"{type(error).__name__}: {str(error)[:200]}") from error

    async def _get_many(self, keys: list[str]) -> list[bytes | str | None]:
        values: list[bytes | str | None] = await self._redis.mget(keys)
        return values

    async def _set_new(self, records: list[tuple[str, str]]) -> list[bool]:
        """SET NX each record (kept `answer_ttl_seconds`); whether each was new."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in records:
                pipe.set(key, value, nx=True, ex=self._ttl)
            return [bool(stored) for stored in await pipe.execute()]


def _key(call_sid: str) -> str:
    return ANSWER_KEY_PREFIX + call_sid
