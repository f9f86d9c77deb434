"""What a running registry holds: its clients and background tasks, built at start-up (bootstrap)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from agentline_common.auth import removed_member_key
from agentline_common.bus import Bus, BusUnavailable
from agentline_common.outbox import OutboxRelay
from agentline_common.processed_events import RedisProcessedEvents
from agentline_common.rate_limits import SlidingWindowLimit
from agentline_common.registry_client import RegistryClient
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentline_registry import repository, service
from agentline_registry.consumers import LookupResponder, SessionLog, start_consumers
from agentline_registry.credentials import SigningKey, load_signing_key
from agentline_registry.database import create_engine, session_factory
from agentline_registry.metrics import RegistryMetrics
from agentline_registry.settings import RegistrySettings
from agentline_registry.tables import OUTBOX

log = structlog.get_logger()

LOGIN_FAILURES_KEY_PREFIX = "agentline:registry:login-failures:"
REDIS_TIMEOUT_SECONDS = 2.0

GAUGE_TIMEOUT_SECONDS = 2.0
"""Bound on reading the gauges for /metrics, so a silent database does not hold the scrape."""


class RemovalNotNoted(Exception):
    """Redis could not be told of a member's removal, so the removal is not made (HTTP 503)."""


@dataclass
class Runtime:
    settings: RegistrySettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    signing_key: SigningKey
    bus: Bus
    redis: Redis
    relay: OutboxRelay
    metrics: RegistryMetrics
    login_failures: SlidingWindowLimit
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def note_removed_member(self, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Tell the services that authorise from access tokens (the token-service's test calls) that
        tokens issued until now no longer make `user_id` a member of `org_id`: a token's `orgs` claim
        outlives a removal by up to the token's lifetime. Noted before the removal commits, so that
        a removal is never made without it."""
        lifetime = timedelta(minutes=self.settings.access_token_minutes)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                await self.redis.set(
                    removed_member_key(org_id, user_id),
                    int(time.time()),
                    ex=lifetime + timedelta(minutes=1),
                )
        except (RedisError, OSError) as error:
            log.warning("org.member_removal_not_noted", org_id=str(org_id), error=type(error).__name__)
            raise RemovalNotNoted(
                "Redis could not be reached, so the member was not removed; try again in a few seconds"
            ) from error

    async def refresh_gauges(self) -> None:
        """Update the gauges read from the database; with the database down (refused, timed out,
        failing) they keep their last values, so /metrics still answers and says what it can."""
        self.metrics.outbox_published.set(self.relay.published)
        self.metrics.outbox_publish_failures.set(self.relay.failures)
        try:
            async with asyncio.timeout(GAUGE_TIMEOUT_SECONDS):
                self.metrics.outbox_pending.set(await self.relay.pending())
                async with self.sessions() as db:
                    active = await repository.count_sessions_with_status(db, "active")
            self.metrics.sessions_active.set(active)
        except (SQLAlchemyError, OSError) as error:  # OSError: refusals and TimeoutError
            log.warning("metrics.database_unavailable", error=type(error).__name__)

    async def sweep_sessions_forever(self) -> None:
        """Expire sessions requested but never started within the token lifetime.

        Any failure of a pass (asyncpg's bare ConnectionRefusedError included) is logged and the
        next pass runs as usual: ending the task would stop expiring sessions until a restart.
        """
        while True:
            try:
                await self.sweep_sessions_once()
            except Exception as error:
                self.metrics.session_sweep_failures.inc()
                log.warning("session.sweep_failed", error=type(error).__name__, detail=str(error)[:300])
            await asyncio.sleep(self.settings.session_sweep_interval_seconds)

    async def sweep_sessions_once(self) -> None:
        lifetime = timedelta(seconds=self.settings.session_expiry_seconds)
        async with self.sessions() as db:
            expired = await service.expire_stale_sessions(
                db, now=datetime.now(UTC), default_lifetime=lifetime
            )
            await db.commit()
        self.metrics.sessions_expired.inc(expired)


async def _connect_bus(settings: RegistrySettings) -> Bus:
    """Connect, retrying while the broker starts up, for at most `startup_timeout_seconds`."""
    deadline = asyncio.get_running_loop().time() + settings.startup_timeout_seconds
    while True:
        bus = Bus(settings.amqp_url.get_secret_value(), exchange=settings.bus_exchange)
        try:
            await bus.connect()
            return bus
        except BusUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("registry.broker_unavailable_retrying")
            await asyncio.sleep(1.0)


async def bootstrap(settings: RegistrySettings, *, metrics: RegistryMetrics) -> Runtime:
    engine = create_engine(settings.database_url)
    bus = await _connect_bus(settings)
    bus.register_metrics(metrics.registry)
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        signing_key=load_signing_key(settings),
        bus=bus,
        redis=redis,
        relay=OutboxRelay(engine=engine, table=OUTBOX, bus=bus, poll_seconds=settings.outbox_poll_seconds),
        metrics=metrics,
        login_failures=SlidingWindowLimit(
            redis,
            key_prefix=LOGIN_FAILURES_KEY_PREFIX,
            limit=settings.login_failures_per_email,
            window_seconds=settings.login_failure_window_seconds,
            timeout=REDIS_TIMEOUT_SECONDS,
        ),
    )
    await start_consumers(
        bus=bus,
        queue_prefix=settings.queue_prefix,
        responder=LookupResponder(runtime.sessions, metrics),
        session_log=SessionLog(runtime.sessions),
        processed=RedisProcessedEvents(redis),
    )
    # The registry drops the shared look-up cache itself on its own agent.changed: the cache is
    # right even when no other service runs, and the event always has a queue to go to.
    await RegistryClient(bus=bus, redis=redis).start()
    runtime.relay.start()
    runtime.tasks.append(asyncio.create_task(runtime.sweep_sessions_forever(), name="session-sweep"))
    log.info("registry.started", exchange=settings.bus_exchange)
    return runtime


async def shutdown(runtime: Runtime) -> None:
    for task in runtime.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runtime.relay.stop()
    await runtime.bus.close()
    await runtime.redis.aclose()
    await runtime.engine.dispose()
    log.info("registry.stopped")
