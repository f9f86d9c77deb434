"""Fixtures of the gateway's tests: gateways serving on loopback, numbers, event watchers.

Test modules import the helper types from here (`from .conftest import ...`); the Twilio forms they
post come from `agentline_common.testing.twilio`, which the benchmark shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from agentline_common.bus import Bus
from agentline_common.events import Event
from agentline_common.processed_events import InMemoryProcessedEvents
from agentline_common.testing.servers import free_port
from agentline_common.testing.twilio import PUBLIC_BASE_URL
from agentline_telephony.app import create_app
from agentline_telephony.settings import TelephonySettings
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from twilio.request_validator import RequestValidator

BROKER_WAIT_SECONDS = 10.0


@dataclass
class RunningGateway:
    """A gateway serving on a loopback port, and a client that posts like Twilio does."""

    app: FastAPI
    base_url: str
    token: str
    client: httpx.AsyncClient

    async def post(
        self,
        path: str,
        form: dict[str, str],
        *,
        signed_url: str | None = None,
        signed_form: dict[str, str] | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        """POST `form` signed over `signed_url` and `signed_form` (defaults: the public URL and `form`)."""
        url = signed_url or f"{PUBLIC_BASE_URL}{path}"
        if signature is None:
            signature = RequestValidator(self.token).compute_signature(url, signed_form or form)
        headers = {"X-Twilio-Signature": signature} if signature else {}
        return await self.client.post(f"{self.base_url}{path}", data=form, headers=headers)


GatewayFactory = Callable[..., Awaitable[RunningGateway]]
"""What the `start_gateway` fixture is: settings overrides in, a running gateway out."""


@asynccontextmanager
async def serve_gateway(
    settings: TelephonySettings, *, wait_for_broker: bool
) -> AsyncIterator[RunningGateway]:
    """Serve the gateway with `settings` on a free loopback port (real uvicorn) until the block ends.

    With `wait_for_broker`, its first broker connection is awaited (bounded), so a test's first
    webhook does not race it; a gateway whose broker is meant to be down simply starts without it.
    """
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    if wait_for_broker:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app.state.gateway.broker_reached.wait(), BROKER_WAIT_SECONDS)
    port = server.servers[0].sockets[0].getsockname()[1]
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        try:
            yield RunningGateway(app=app, base_url=f"http://127.0.0.1:{port}", token=token, client=client)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 20)


@dataclass
class EventLog:
    """Events seen on an exchange, through a durable queue of the watcher's own."""

    events: list[Event] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()

    async def wait_for(self, count: int, *, timeout: float = 30.0) -> list[Event]:
        """The events once at least `count` have arrived; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events


async def watch_events(bus: Bus, routing_keys: list[str]) -> EventLog:
    watcher = EventLog()
    await bus.consume(
        queue=f"test-events-{secrets.token_hex(6)}",
        routing_keys=routing_keys,
        handler=watcher.handle,
        processed=InMemoryProcessedEvents(),
    )
    return watcher


@pytest_asyncio.fixture(loop_scope="session")
async def start_gateway(tmp_path: Path, amqp_url: str, redis_url: str) -> AsyncIterator[GatewayFactory]:
    """Start gateways (a real uvicorn server each, on loopback) with settings overrides.

    Each gets a fresh Twilio auth token, its own SQLite file and, unless told otherwise, an
    exchange of its own. `wait_for_broker=False` returns before its first broker connection.
    """
    async with AsyncExitStack() as stack:

        async def start(*, wait_for_broker: bool = True, **overrides: Any) -> RunningGateway:
            values: dict[str, Any] = {
                "environment": "test",
                "log_format": "console",
                "amqp_url": SecretStr(amqp_url),
                "redis_url": SecretStr(redis_url),
                "bus_exchange": f"test-{secrets.token_hex(6)}",
                "public_base_url": PUBLIC_BASE_URL,
                "twilio_auth_token": SecretStr(secrets.token_urlsafe(32)),
                "telephony_database_url": SecretStr(
                    f"sqlite+aiosqlite:///{tmp_path}/telephony-{secrets.token_hex(4)}.db"
                ),
                "livekit_sip_host": "127.0.0.1:5060",
                "outbox_relay_interval_seconds": 0.2,
                **overrides,
            }
            settings = TelephonySettings(**values)
            return await stack.enter_async_context(serve_gateway(settings, wait_for_broker=wait_for_broker))

        yield start
        await asyncio.sleep(0)


class FaultyLink:
    """A TCP relay to a real server that can be made to stall (connections accepted, nothing passed
    on either way) or to refuse (nothing listening, open connections cut): a database that hangs, or
    one that is down, at will, without stopping the shared server."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.stalled = False
        self._closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def stall(self) -> None:
        self.stalled = True

    async def refuse(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.append(client_writer)
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        with contextlib.suppress(OSError):  # a connection cut by `refuse`
            if self.stalled:
                await self._closed.wait()
                return
            server_reader, server_writer = await asyncio.open_connection(*self.target)
            self._writers.append(server_writer)
            await asyncio.gather(
                self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
            )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._closed.is_set() and (data := await reader.read(65536)):
            if self.stalled:
                await self._closed.wait()
                return
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def faulty_postgres(postgres_database: str) -> AsyncIterator[tuple[FaultyLink, SecretStr]]:
    """A fresh PostgreSQL database reached through a `FaultyLink`, and the URL that goes through it."""
    url = make_url(postgres_database)
    assert url.host is not None and url.port is not None
    link = FaultyLink(url.host, url.port)
    await link.start()
    try:
        yield link, SecretStr(url.set(port=link.port).render_as_string(hide_password=False))
    finally:
        await link.refuse()


@pytest.fixture
def unique_number() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))
