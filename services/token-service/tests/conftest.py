"""Fixtures of the token-service's tests: the app in-process against the real servers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from agentline_common.bus import Bus
from agentline_common.events import Event
from agentline_token_service.app import create_app
from agentline_token_service.settings import TokenServiceSettings

AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def exchange() -> str:
    """A bus exchange of this test's own."""
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def make_settings(amqp_url: str, redis_url: str, exchange: str) -> Callable[..., TokenServiceSettings]:
    """Settings against the real broker and Redis, on this test's exchange; LiveKit left unset."""

    def factory(**overrides: Any) -> TokenServiceSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "amqp_url": amqp_url,
            "redis_url": redis_url,
            "bus_exchange": exchange,
            "rate_limit_requests": 1000,
        }
        values.update(overrides)
        return TokenServiceSettings(**values)

    return factory


@pytest.fixture
def livekit_values(livekit_server: Any) -> dict[str, str]:
    """The settings values that point the service at the test LiveKit server."""
    return {
        "livekit_url": livekit_server.url,
        "livekit_api_key": livekit_server.api_key,
        "livekit_api_secret": livekit_server.api_secret,
    }


@asynccontextmanager
async def running_app(settings: TokenServiceSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and an HTTP client that talks to it in-process."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://token-service.test"
        ) as client,
    ):
        yield client


@pytest.fixture
def app_client() -> AppFactory:
    """`async with app_client(settings) as client:` runs the token-service in this process."""
    return running_app


@pytest.fixture
async def events_on(amqp_url: str) -> AsyncIterator[Callable[..., Any]]:
    """`await events_on(exchange, "session.*")` binds a private queue there and returns what arrives."""
    buses: list[Bus] = []

    async def subscribe(exchange: str, *routing_keys: str) -> asyncio.Queue[Event]:
        bus = Bus(amqp_url, exchange=exchange)
        await bus.connect()
        buses.append(bus)
        received: asyncio.Queue[Event] = asyncio.Queue()
        await bus.subscribe(routing_keys=list(routing_keys), handler=received.put)
        return received

    yield subscribe
    for bus in buses:
        await bus.close()
