"""The registry with a dependency down (real broker; a database or Redis that refuses or never answers):
every answer is bounded and says what is wrong, and the background work outlives the outage."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from agentline_common.bus import HoldEvents
from agentline_common.events import SessionEnded, SessionEndedData
from agentline_common.testing.servers import free_port
from agentline_registry import service
from agentline_registry.app import DATABASE_UNAVAILABLE
from agentline_registry.consumers import SessionLog
from agentline_registry.credentials import issue_access_token
from agentline_registry.database import create_engine, session_factory
from agentline_registry.settings import RegistrySettings
from pydantic import SecretStr

from .conftest import RunningApp, running_app, started_app

pytestmark = pytest.mark.integration

NO_HANG_BOUND_SECONDS = 10
"""Generous beside the 2 s statement bound; without one a held lock held the request for ever
(PostgreSQL) or 15 s (SQLite)."""
LOGIN = {"email": "nobody@example.test", "password": "correct horse battery staple"}


def postgres_at(port: int) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/registry"


async def sweep_failures(running: RunningApp, *, at_least: int) -> float:
    """The sweep's failure count once it reaches `at_least`; TimeoutError if it stops counting."""
    async with asyncio.timeout(10):
        while True:
            failures = running.runtime.metrics.registry.get_sample_value(
                "agentline_registry_session_sweep_failures_total"
            )
            if failures is not None and failures >= at_least:
                return failures
            await asyncio.sleep(0.02)


async def test_the_call_log_holds_events_the_database_cannot_take_instead_of_failing_them(
    tmp_path: Path,
) -> None:
    """A failing handler spends one of an event's deliveries, and the broker dead-letters it at the
    limit: an outage longer than a few tries would leave call-log rows in the dead letters."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'not-there' / 'registry.db'}")
    ended = SessionEnded(session_id=uuid.uuid4(), data=SessionEndedData(reason="user_hangup"))
    try:
        with pytest.raises(HoldEvents, match="cannot be written now"):
            await SessionLog(session_factory(engine)).handle([ended])
    finally:
        await engine.dispose()


async def test_log_ins_the_database_could_not_answer_do_not_lock_the_email_out(
    make_settings: Callable[..., RegistrySettings],
) -> None:
    """Only a wrong password counts against an email: the person retrying through an outage would
    otherwise be refused for the limit's five minutes after the database came back."""
    login = {**LOGIN, "email": f"retrying-{uuid.uuid4().hex[:8]}@example.test"}
    settings = make_settings(database_url=postgres_at(free_port()))
    async with started_app(settings) as running:
        answers = [
            (await running.client.post("/api/v1/auth/login", json=login)).status_code for _ in range(7)
        ]

    assert answers == [503] * 7


async def test_a_refused_database_answers_503_and_the_sweep_goes_on(
    make_settings: Callable[..., RegistrySettings],
) -> None:
    settings = make_settings(database_url=postgres_at(free_port()), session_sweep_interval_seconds=0.05)
    async with started_app(settings) as running:
        login = await running.client.post("/api/v1/auth/login", json=LOGIN)
        metrics = await running.client.get("/metrics")
        ready = await running.client.get("/readyz")
        # A second failed pass: the sweep outlived the first refusal (asyncpg's bare OSError).
        await sweep_failures(running, at_least=2)

    assert login.status_code == 503
    assert login.json() == {"detail": DATABASE_UNAVAILABLE}
    assert login.headers["Retry-After"] == "5"
    assert metrics.status_code == 200
    assert "agentline_registry_outbox_pending" in metrics.text
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unavailable"


async def test_a_database_that_never_answers_gets_503_within_seconds_not_a_minute(
    make_settings: Callable[..., RegistrySettings], silent_port: int
) -> None:
    settings = make_settings(database_url=postgres_at(silent_port))
    async with started_app(settings) as running:
        started = time.monotonic()
        async with asyncio.timeout(30):  # asyncpg's own connect timeout would be 60 s
            login = await running.client.post("/api/v1/auth/login", json=LOGIN)
        elapsed = time.monotonic() - started

    assert login.status_code == 503
    assert login.json() == {"detail": DATABASE_UNAVAILABLE}
    assert elapsed < 20, f"took {elapsed:.1f} s"


@asynccontextmanager
async def write_lock_held(database_url: str) -> AsyncIterator[None]:
    """Another client holding the lock that writing to `orgs` needs, until the block ends: a
    transaction that stalls (a slow migration, an operator's open psql session)."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(database_url.split(":///", 1)[1], isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
        finally:
            holder.close()
        return
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE orgs IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await connection.close()


async def test_a_statement_stalled_on_a_lock_answers_503_instead_of_hanging(
    make_settings: Callable[..., RegistrySettings], database_url: str
) -> None:
    settings = make_settings(database_url=database_url)
    async with running_app(settings) as running:
        async with running.runtime.sessions() as session:
            user = await service.create_user(session, email=f"{uuid.uuid4().hex}@example.test", password="pw")
            await session.commit()
        token = issue_access_token(
            running.runtime.signing_key,
            user_id=user.id,
            email=user.email,
            orgs={},
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            lifetime=timedelta(minutes=5),
        )
        async with write_lock_held(database_url), asyncio.timeout(NO_HANG_BOUND_SECONDS):
            created = await running.client.post(
                "/api/v1/orgs", json={"name": "Org"}, headers={"Authorization": f"Bearer {token.token}"}
            )

    assert created.status_code == 503, created.text
    assert created.json() == {"detail": DATABASE_UNAVAILABLE}
    assert created.headers["Retry-After"]


async def test_readyz_is_503_naming_redis_when_redis_is_down(
    make_settings: Callable[..., RegistrySettings],
) -> None:
    settings = make_settings(redis_url=SecretStr(f"redis://127.0.0.1:{free_port()}/0"))
    async with running_app(settings) as running:
        started = time.monotonic()
        ready = await running.client.get("/readyz")
        elapsed = time.monotonic() - started

    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "redis": "unavailable", "broker": "ok"}
    assert elapsed < 10, f"took {elapsed:.1f} s"
