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


MAX_RETRY_SECONDS = 10.0


def retry_delay(poll_seconds: float, failed_in_a_row: int) -> float:
    """The wait before the next pass: the poll interval, doubled for each pass that failed in a row
    (a database that is down is not asked many times a second), at most `MAX_RETRY_SECONDS`."""
    growth = 2.0 ** min(failed_in_a_row, 16)
    return min(poll_seconds * growth, max(poll_seconds, MAX_RETRY_SECONDS))


class OutboxRelay:
    """Publishes committed outbox rows in order of creation, a batch at a time, then marks them sent.

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
        """Passes that stopped on a failed publish (broker down or refusing)."""

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
        """Publish what is pending, oldest first; stop after a batch with a failure. Returns rows published.

        A batch's rows are published together: sent in order on the one channel, confirmed as the
        broker gets to them. Published one by one, each row waited for its own confirm (a round trip
        and a wake-up per row), which capped the relay below the rate a busy gateway writes rows and
        cost it more CPU than the rest of the relay. Confirmed rows are marked sent in one statement
        per batch; a row whose publish failed stays pending for a later pass, so it can arrive after
        younger rows of its batch, which consumers absorb (they are idempotent and order-tolerant),
        as they absorb a batch republished after a crash before the mark.
        """
        published = 0
        while True:
            batch = await self._unsent_batch()
            if not batch:
                return published
            errors = await asyncio.gather(*(self._publish_row(*row) for row in batch))
            sent = [row[0] for row, error in zip(batch, errors, strict=True) if error is None]
            failed = {row[0]: error for row, error in zip(batch, errors, strict=True) if error is not None}
            await self._mark_sent(sent)
            if sent:
                log.info("outbox.batch_published", count=len(sent))
            published += len(sent)
            if failed:
                self.failures += 1
                first_error = next(iter(failed.values()))
                log.warning("outbox.publish_failed", rows=len(failed), error=first_error[:300])
                await self._mark_failed(failed)
                return published
            if len(batch) < self._batch_size:
                return published

    async def purge_sent(self) -> None:
        """Drop rows published longer ago than `keep_sent_for`, so the table stays small."""
        cutoff = datetime.now(UTC) - self._keep_sent_for
        async with self._engine.begin() as connection:
            await connection.execute(delete(self._table).where(self._table.c.sent_at < cutoff))

    async def _run(self) -> None:
        """Relay until stopped, whatever fails on the way.

        A pass can fail in many ways besides a SQLAlchemy error: asyncpg raises a bare
        ConnectionRefusedError while PostgreSQL refuses connections, a connect can time out. Any of
        them ending this task would leave the committed events unsent until a restart, so every
        failure is logged and retried, the waits growing while it lasts (`retry_delay`). A `wake()`
        ends the wait early: it follows a commit, so the database is back.
        """
        passes = 0
        failed_in_a_row = 0
        while not self._stopping:
            try:
                await self.relay_once()
                passes += 1
                if passes % 600 == 0:
                    await self.purge_sent()
                failed_in_a_row = 0
            except Exception as error:
                failed_in_a_row += 1
                log.warning(
                    "outbox.relay_failed",
                    error=type(error).__name__,
                    detail=str(error)[:300],
                    failed_in_a_row=failed_in_a_row,
                )
            if self._stopping:
                return
            delay = retry_delay(self._poll_seconds, failed_in_a_row)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)
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

    async def _publish_row(self, event_id: object, body: str, correlation_id: str | None) -> str | None:
        """Publish one row (in a task of its own, so the correlation id it binds stays its own).

        Returns why the publish failed, or None once it is confirmed.
        """
        try:
            event = parse_event(body)
        except ValidationError as error:
            # A row this code cannot read would block every later one; park it as sent and go on.
            log.error("outbox.row_unreadable", event_id=str(event_id), error=str(error)[:300])
            return None
        bind_correlation_id(correlation_id)
        try:
            await self._bus.publish(event)
        except PublishError as error:
            return str(error)[:500]
        self.published += 1
        log.debug("outbox.published", event_id=str(event_id), event_type=event.type)
        return None

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

    async def _mark_failed(self, errors: dict[object, str]) -> None:
        """Count an attempt on each row whose publish failed, and keep why."""
        table = self._table
        async with self._engine.begin() as connection:
            for event_id, error in errors.items():
                await connection.execute(
                    update(table)
                    .where(table.c.id == event_id)
                    .values(attempts=table.c.attempts + 1, last_error=error)
                )
