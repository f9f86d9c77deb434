"""Fixtures of the registry's tests: migrated databases (SQLite and PostgreSQL) and the app in-process
against the real broker and Redis."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from agentline_common.testing.servers import free_port
from agentline_registry.app import create_app
from agentline_registry.database import create_engine, migrate, session_factory
from agentline_registry.runtime import Runtime
from agentline_registry.settings import RegistrySettings
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the registry supports (not yet migrated)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@dataclass
class Database:
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture(loop_scope="session")
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated database with an engine and session factory on it."""
    await asyncio.to_thread(migrate, database_url)
    engine = create_engine(database_url)
    try:
        yield Database(url=database_url, engine=engine, sessions=session_factory(engine))
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"


def settings_factory(*, amqp_url: str, redis_url: str, directory: Path) -> Callable[..., RegistrySettings]:
    """Settings on the real broker and Redis, on an exchange (and queues) of their own, with
    SQLite in `directory`."""
    exchange = f"test-{secrets.token_hex(6)}"
    sqlite_url = f"sqlite+aiosqlite:///{directory / f'registry-{exchange}.db'}"

    def factory(**overrides: Any) -> RegistrySettings:
        values: dict[str, Any] = {
            "environment": "test",
            "amqp_url": amqp_url,
            "redis_url": redis_url,
            "bus_exchange": exchange,
            "queue_prefix": f"{exchange}.",
            "database_url": sqlite_url,
            "outbox_poll_seconds": 0.2,
        }
        values.update(overrides)
        return RegistrySettings(**values)

    return factory


@pytest.fixture
def make_settings(amqp_url: str, redis_url: str, tmp_path: Path) -> Callable[..., RegistrySettings]:
    return settings_factory(amqp_url=amqp_url, redis_url=redis_url, directory=tmp_path)


@dataclass
class RunningApp:
    app: FastAPI
    client: httpx.AsyncClient
    runtime: Runtime


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port where TCP connections are accepted (by the kernel) and nothing ever answers:
    a server that hangs, which a client must bound with its own timeout."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port), backlog=64):
        yield port


@asynccontextmanager
async def running_app(settings: RegistrySettings) -> AsyncIterator[RunningApp]:
    """The app migrated and started (lifespan run), with an in-process HTTP client."""
    await asyncio.to_thread(migrate, settings.database_url)
    async with started_app(settings) as running:
        yield running


@asynccontextmanager
async def started_app(settings: RegistrySettings) -> AsyncIterator[RunningApp]:
    """The app started (lifespan run) without migrating: its database may be unreachable."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
            yield RunningApp(app=app, client=client, runtime=app.state.runtime)


AppFactory = Callable[..., AbstractAsyncContextManager[RunningApp]]


@pytest.fixture
def app_factory(make_settings: Callable[..., RegistrySettings]) -> AppFactory:
    def factory(**overrides: Any) -> AbstractAsyncContextManager[RunningApp]:
        return running_app(make_settings(**overrides))

    return factory


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def registry(
    amqp_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningApp]:
    """A started registry app shared by one test module (tests use random ids and own orgs)."""
    factory = settings_factory(
        amqp_url=amqp_url, redis_url=redis_url, directory=tmp_path_factory.mktemp("registry")
    )
    async with running_app(factory()) as running:
        yield running
