"""The FastAPI application: factory and lifespan, where every client is built and closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import structlog
from agentline_common.bus import Bus, connect_until_up
from agentline_common.http import ObservedRequests
from agentline_common.logging import configure_logging
from agentline_common.outbox import OutboxRelay
from agentline_common.registry_client import RegistryClient
from fastapi import FastAPI
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from agentline_telephony.api import STATUS_PATH, BrokerGrace, Gateway, router, webhooks
from agentline_telephony.metrics import GatewayMetrics
from agentline_telephony.repository import (
    OutboxWriter,
    RedisOutboxCallStore,
    create_engine,
    create_schema,
    outbox,
)
from agentline_telephony.settings import TelephonySettings
from agentline_telephony.twiml import SipTarget

log = structlog.get_logger()


def sip_target(settings: TelephonySettings) -> SipTarget:
    return SipTarget(
        host=settings.livekit_sip_host,
        username=settings.sip_username,
        password=settings.sip_password.get_secret_value() if settings.sip_password else "",
        dial_action_url=f"{settings.public_base_url}{STATUS_PATH}",
    )


async def connect_bus_until_up(bus: Bus, registry: RegistryClient, *, connected: asyncio.Event) -> None:
    """Connect to the broker (retrying while it is down), start the registry client's subscription,
    and set `connected`: readiness waits for that first connection (bounded, see `readyz`), and the
    gateway stays ready while the robust connection reconnects later."""
    await connect_until_up(bus, then=registry.start)
    connected.set()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: TelephonySettings = app.state.settings
    engine = create_engine(settings.telephony_database_url.get_secret_value())
    await create_schema(engine)
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=1.0, socket_connect_timeout=1.0
    )
    bus = Bus(settings.amqp_url.get_secret_value(), exchange=settings.bus_exchange)
    registry = RegistryClient.configured(
        settings, bus=bus, redis=redis, timeout=settings.lookup_timeout_seconds, answer_stale=True
    )
    bus.register_metrics(app.state.metrics.registry)
    registry.register_metrics(app.state.metrics.registry)
    writer = OutboxWriter(engine=engine, table=outbox)
    calls = RedisOutboxCallStore(
        outbox=writer, redis=redis, answer_ttl_seconds=settings.call_answer_ttl_seconds
    )
    relay = OutboxRelay(
        engine=engine, table=outbox, bus=bus, poll_seconds=settings.outbox_relay_interval_seconds
    )
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    if not token:
        log.warning("twilio.auth_token_missing", effect="every webhook is refused with 503")
    broker_reached = asyncio.Event()
    app.state.gateway = Gateway(
        public_base_url=settings.public_base_url,
        validator=RequestValidator(token) if token else None,
        target=sip_target(settings),
        session_ttl=timedelta(seconds=settings.session_request_ttl_seconds),
        registry=registry,
        calls=calls,
        relay=relay,
        bus=bus,
        redis=redis,
        engine=engine,
        metrics=app.state.metrics,
        broker_reached=broker_reached,
        broker_grace=BrokerGrace(
            started=asyncio.get_running_loop().time(), seconds=settings.broker_ready_grace_seconds
        ),
    )
    connecting = asyncio.create_task(
        connect_bus_until_up(bus, registry, connected=broker_reached), name="bus-connect"
    )
    relay.start()
    log.info("telephony.started", public_base_url=settings.public_base_url)
    try:
        yield
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await calls.close()
        await writer.close()
        await relay.stop()
        await bus.close()
        await redis.aclose()
        await engine.dispose()
        log.info("telephony.stopped")


def create_app(settings: TelephonySettings | None = None) -> FastAPI:
    settings = settings or TelephonySettings()
    configure_logging(service=settings.service_name, json=settings.json_logs, level=settings.log_level)
    app = FastAPI(
        title="Agentline telephony gateway",
        description="Twilio voice webhooks answered with TwiML that bridges calls to LiveKit SIP.",
        version="0.1.0",
        lifespan=lifespan,
        # /metrics exports our own Prometheus figures; FastAPI's OpenTelemetry hooks, unused, still
        # looked up the tracer provider (and the environment) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics = GatewayMetrics()
    app.add_middleware(ObservedRequests, latency=metrics.request_latency)
    app.include_router(webhooks)
    app.include_router(router)
    return app
