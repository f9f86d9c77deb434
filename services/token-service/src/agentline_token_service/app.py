"""The token-service application: factory and lifespan (clients are built here, never at import)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import httpx
from agentline_common.auth import JwksVerifier
from agentline_common.bus import Bus, connect_until_up
from agentline_common.http import ObservedRequests
from agentline_common.registry_client import RegistryClient
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from livekit import api as livekit_api
from redis.asyncio import Redis

from agentline_token_service.api import (
    REFUSALS,
    Runtime,
    refusal_response,
    router,
    validation_response,
)
from agentline_token_service.consumers import start_consumers
from agentline_token_service.metrics import Metrics
from agentline_token_service.service import MissingAgentRequests
from agentline_token_service.settings import TokenServiceSettings
from agentline_token_service.stores import RedisTestCalls


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Stop a start-up task still running at shutdown (the broker never came up)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: TokenServiceSettings | None = None) -> FastAPI:
    """Build the app; `settings` default to the environment's."""
    settings = settings or TokenServiceSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.runtime = await _connect(settings, metrics, stack)
            yield

    app = FastAPI(
        title="Agentline token-service",
        version="0.1.0",
        summary="LiveKit tokens for the console's Test Agent call.",
        lifespan=lifespan,
        # /metrics exports our own Prometheus figures; FastAPI's OpenTelemetry hooks, unused, still
        # looked up the tracer provider (and the environment) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(router)
    for refusal in REFUSALS:
        app.add_exception_handler(refusal, refusal_response)
    app.add_exception_handler(RequestValidationError, validation_response)
    app.add_middleware(ObservedRequests, latency=metrics.request_latency)
    return app


async def _connect(settings: TokenServiceSettings, metrics: Metrics, stack: AsyncExitStack) -> Runtime:
    bound = settings.dependency_timeout_seconds
    bus = Bus(settings.amqp_url.get_secret_value(), exchange=settings.bus_exchange)
    stack.push_async_callback(bus.close)
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(), socket_connect_timeout=bound, socket_timeout=bound
    )
    stack.push_async_callback(redis.aclose)
    http = await stack.enter_async_context(httpx.AsyncClient(timeout=bound))
    registry = RegistryClient.configured(settings, bus=bus, redis=redis, timeout=bound)
    bus.register_metrics(metrics.registry)
    registry.register_metrics(metrics.registry)
    connecting = asyncio.create_task(
        connect_until_up(bus, then=partial(start_consumers, registry)), name="bus-connect"
    )
    stack.push_async_callback(_cancelled, connecting)
    await asyncio.wait({connecting}, timeout=settings.broker_startup_wait_seconds)
    receiver = None
    if settings.livekit_configured and settings.livekit_api_key and settings.livekit_api_secret:
        receiver = livekit_api.WebhookReceiver(
            livekit_api.TokenVerifier(
                settings.livekit_api_key.get_secret_value(),
                settings.livekit_api_secret.get_secret_value(),
            )
        )
    return Runtime(
        settings=settings,
        bus=bus,
        redis=redis,
        http=http,
        registry=registry,
        verifier=JwksVerifier(
            jwks_url=settings.jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            http=http,
        ),
        calls=RedisTestCalls(
            redis,
            limit=settings.rate_limit_requests,
            window_seconds=settings.rate_limit_window_seconds,
            mapping_ttl_seconds=settings.session_mapping_ttl_seconds,
            timeout=bound,
        ),
        missing_agents=MissingAgentRequests(
            limit=settings.rate_limit_requests, window_seconds=settings.rate_limit_window_seconds
        ),
        webhook_receiver=receiver,
        metrics=metrics,
    )
