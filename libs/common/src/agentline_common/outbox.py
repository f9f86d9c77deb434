"""A transactional outbox: events written with the data they announce, published after the commit.

A service adds the event to the outbox table in the same database transaction as its change. A relay
publishes unsent rows with `Bus.publish` (publisher confirms) and only then marks them sent, so a crash
between the commit and the publish loses nothing: the row is still unsent and the next relay pass,
in this process or the next one, publishes it. Delivery is at least once; consumers are idempotent on
the event id, which is the row's primary key.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import ValidationError
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from agentline_common.bus import Bus, PublishError
from agentline_common.events import Event, encode_event, parse_event
from agentline_common.logging import bind_correlation_id, current_correlation_id

log = structlog.get_logger()

DEFAULT_TABLE_NAME = "outbox"


def outbox_table(metadata: MetaData, name: str = DEFAULT_TABLE_NAME) -> Table:
    """Declare the outbox table on the service's own metadata (so its migrations create it)."""
    return Table(
        name,
        metadata,
        Column("id", Uuid, primary_key=True, comment="the event id"),
        Column("event_type", String(64), nullable=False),
        Column("body", Text, nullable=False),
        Column("correlation_id", String(128), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, index=True),
        Column("sent_at", DateTime(timezone=True), nullable=True, index=True),
        Column("attempts", Integer, nullable=False, default=0),
        Column("last_error", String(500), nullable=True),
    )


def outbox_row(event: Event) -> dict[str, object]:
    """The outbox row of `event`, with the correlation id bound now (call it in the request's context).

    For writers that insert rows in their own statements, such as one that commits many requests'
    events together.
    """
    return {
        "id": event.id,
        "event_type": event.type,
        "body": encode_event(event).decode(),
        "correlation_id": current_correlation_id(),
        "created_at": datetime.now(UTC),
        "attempts": 0,
    }


async def add_to_outbox(db: AsyncSession | AsyncConnection, table: Table, event: Event) -> None:
    """Write `event` in the caller's transaction; it is published only if that transaction commits."""
    await db.execute(insert(table).values(**outbox_row(event)))


class OutboxRelay:
    """Publishes committed outbox rows in order of creation, then marks them sent.

    Call `wake()` after a commit for prompt delivery; the relay also polls every `poll_seconds`, which
    is what picks up rows left behind by a crash or by a broker that was down.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        table: Table,
        bus: Bus,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
        keep_sent_for: timedelta = timedelta(days=1),
    ) -> None:
        self._engine = engine
        self._table = table
        self._bus = bus
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._keep_sent_for = keep_sent_for
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        """Let the pass in progress finish (so a published row is also marked sent), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._stopping = False

    async def pending(self) -> int:
        """How many rows wait to be published (for metrics and tests)."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(self._table.c.id).where(self._table.c.sent_at.is_(None)))
            return len(rows.all())

    async def relay_once(self) -> int:
        """Publish what is pending, oldest first; stop at the first failure. Returns rows published.

        Rows are published one by one, in order, and marked sent together once per batch: one write
        transaction per batch instead of per row keeps the relay from competing with the service's
        own writes. A crash before the mark republishes the batch, which consumers absorb.
        """
        published = 0
        while True:
            batch = await self._unsent_batch()
            if not batch:
                return published
            sent: list[object] = []
            failed = False
            for event_id, body, correlation_id in batch:
                if not await self._publish_row(event_id, body, correlation_id):
                    failed = True
                    break
                sent.append(event_id)
            await self._mark_sent(sent)
            if sent:
                log.info("outbox.batch_published", count=len(sent))
            published += len(sent)
            if failed or len(batch) < self._batch_size:
                return published

    async def purge_sent(self) -> None:
        """Drop rows published longer ago than `keep_sent_for`, so the table stays small."""
        cutoff = datetime.now(UTC) - self._keep_sent_for
        async with self._engine.begin() as connection:
            await connection.execute(delete(self._table).where(self._table.c.sent_at < cutoff))

    async def _run(self) -> None:
        passes = 0
        while not self._stopping:
            try:
                await self.relay_once()
                passes += 1
                if passes % 600 == 0:
                    await self.purge_sent()
            except SQLAlchemyError as error:
                log.warning("outbox.database_unavailable", error=type(error).__name__)
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_seconds)
            self._wakeup.clear()

    async def _unsent_batch(self) -> list[tuple[object, str, str | None]]:
        table = self._table
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(table.c.id, table.c.body, table.c.correlation_id)
                .where(table.c.sent_at.is_(None))
                .order_by(table.c.created_at)
                .limit(self._batch_size)
            )
            return [(row.id, row.body, row.correlation_id) for row in rows]

    async def _publish_row(self, event_id: object, body: str, correlation_id: str | None) -> bool:
        try:
            event = parse_event(body)
        except ValidationError as error:
            # A row this code cannot read would block every later one; park it as sent and go on.
            log.error("outbox.row_unreadable", event_id=str(event_id), error=str(error)[:300])
            return True
        bind_correlation_id(correlation_id)
        try:
            await self._bus.publish(event)
        except PublishError as error:
            self.failures += 1
            log.warning("outbox.publish_failed", event_id=str(event_id), error=str(error)[:300])
            await self._mark_failed(event_id, error=str(error)[:500])
            return False
        self.published += 1
        log.debug("outbox.published", event_id=str(event_id), event_type=event.type)
        return True

    async def _mark_sent(self, event_ids: list[object]) -> None:
        if not event_ids:
            return
        table = self._table
        async with self._engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.id.in_(event_ids))
                .values(sent_at=datetime.now(UTC), attempts=table.c.attempts + 1, last_error=None)
            )

    async def _mark_failed(self, event_id: object, *, error: str) -> None:
        table = self._table
        async with self._engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.id == event_id)
                .values(attempts=table.c.attempts + 1, last_error=error)
            )
