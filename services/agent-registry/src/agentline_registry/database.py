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


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine whose waits are bounded; on SQLite, foreign keys on and a busy timeout so
    writers queue, not fail."""
    is_sqlite = database_url.startswith("sqlite")
    options: dict[str, Any] = {"connect_args": {"timeout": 15}}
    if not is_sqlite:
        options = {"pool_pre_ping": True, "pool_timeout": POOL_TIMEOUT_SECONDS}
        if database_url.startswith("postgresql+asyncpg"):
            options["connect_args"] = {"timeout": CONNECT_TIMEOUT_SECONDS}
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
