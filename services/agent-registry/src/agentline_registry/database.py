"""The database engine, the unit of work, and schema migrations (Alembic)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

CONNECT_TIMEOUT_SECONDS = 3.0
"""Bound on opening a PostgreSQL connection: asyncpg's own default (60 s) held every request that long
while the server accepted connections but did not answer."""
POOL_TIMEOUT_SECONDS = 5.0
"""Bound on waiting for a pooled connection (SQLAlchemy's default is 30 s)."""
STATEMENT_TIMEOUT_SECONDS = 2.0
"""Bound on one statement: asyncpg's command_timeout on PostgreSQL (none by default: a stalled server
or a held lock kept a console request or a look-up waiting for ever), the wait for the write lock on
SQLite (was 15 s). Past it the request answers 503 (a TimeoutError or "database is locked")."""
MIGRATION_STATEMENT_TIMEOUT_SECONDS = 600.0
"""The same bound for schema migrations, which may rewrite a large table and may wait for the running
registry's writes."""


def create_engine(database_url: str, *, statement_timeout: float = STATEMENT_TIMEOUT_SECONDS) -> AsyncEngine:
    """An async engine whose waits are bounded; on SQLite, foreign keys on and a busy timeout so
    writers queue, not fail, for up to `statement_timeout`."""
    is_sqlite = database_url.startswith("sqlite")
    options: dict[str, Any] = {"connect_args": {"timeout": statement_timeout}}
    if not is_sqlite:
        options = {"pool_pre_ping": True, "pool_timeout": POOL_TIMEOUT_SECONDS}
        if database_url.startswith("postgresql+asyncpg"):
            options["connect_args"] = {
                "timeout": CONNECT_TIMEOUT_SECONDS,
                "command_timeout": statement_timeout,
            }
    engine = create_async_engine(database_url, **options)
    if is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class UnitOfWork:
    """One request's transaction. Services flush; only the entry point commits, then `after_commit`
    runs (it wakes the outbox relay), so nothing is announced for work that rolled back."""

    def __init__(self, session: AsyncSession, *, after_commit: Callable[[], None]) -> None:
        self.session = session
        self._after_commit = after_commit

    async def commit(self) -> None:
        await self.session.commit()
        self._after_commit()


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("agentline_registry") / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (blocking; runs its own event loop)."""
    command.upgrade(alembic_config(database_url), revision)
