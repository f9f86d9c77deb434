"""Alembic environment: runs migrations on the async engine named by the config's sqlalchemy.url."""

from __future__ import annotations

import asyncio

from agentline_registry import tables  # noqa: F401  (registers the tables on the metadata)
from agentline_registry.database import MIGRATION_STATEMENT_TIMEOUT_SECONDS, create_engine
from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(
        context.config.get_main_option("sqlalchemy.url") or "",
        statement_timeout=MIGRATION_STATEMENT_TIMEOUT_SECONDS,
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


asyncio.run(_run_async())
