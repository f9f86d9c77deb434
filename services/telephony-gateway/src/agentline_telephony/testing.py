"""Test and benchmark support: Twilio-shaped webhook forms, a signing client, a gateway on loopback.

Shipped in the package (like agentline_common.testing) so the tests and the benchmark share one
definition of what Twilio sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn
from agentline_common.bus import Bus
from agentline_common.events import Event
from agentline_common.processed_events import InMemoryProcessedEvents
from fastapi import FastAPI
from twilio.request_validator import RequestValidator

from agentline_telephony.app import create_app
from agentline_telephony.settings import TelephonySettings

PUBLIC_BASE_URL = "https://voice.agentline.example.test"
INCOMING = "/api/v1/voice/twilio/incoming"
STATUS = "/api/v1/voice/twilio/status"


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def incoming_form(to: str, *, call_sid: str | None = None, caller: str = "+14155550123") -> dict[str, str]:
    """The voice webhook exactly as Twilio posts it for an inbound call (field names and values)."""
    return {
        "AccountSid": "AC" + "0123456789abcdef" * 2,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid or new_call_sid(),
        "CallStatus": "ringing",
        "CallToken": "%7B%22parentCallInfoToken%22%3A%22eyJhbGciOiJFUzI1NiJ9%22%7D",
        "Called": to,
        "CalledCity": "",
        "CalledCountry": "US",
        "CalledState": "CA",
        "CalledZip": "",
        "Caller": caller,
        "CallerCity": "SAN FRANCISCO",
        "CallerCountry": "US",
        "CallerState": "CA",
        "CallerZip": "94103",
        "Direction": "inbound",
        "From": caller,
        "FromCity": "SAN FRANCISCO",
        "FromCountry": "US",
        "FromState": "CA",
        "FromZip": "94103",
        "StirVerstat": "TN-Validation-Passed-A",
        "To": to,
        "ToCity": "",
        "ToCountry": "US",
        "ToState": "CA",
        "ToZip": "",
    }


def status_form(incoming: dict[str, str], status: str, **extra: str) -> dict[str, str]:
    """A status callback for the call `incoming` started, as Twilio posts it."""
    keep = ("AccountSid", "ApiVersion", "CallSid", "Called", "Caller", "Direction", "From", "To")
    return {
        **{key: incoming[key] for key in keep},
        "CallStatus": status,
        "CallbackSource": "call-progress-events",
        "SequenceNumber": "0",
        "Timestamp": "Tue, 24 Nov 2026 16:30:00 +0000",
        **extra,
    }


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
"""What the tests' `start_gateway` fixture is: settings overrides in, a running gateway out."""


@asynccontextmanager
async def serve_gateway(settings: TelephonySettings) -> AsyncIterator[RunningGateway]:
    """Serve the gateway with `settings` on a free loopback port (real uvicorn) until the block ends."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    await _broker_connected(app, within=10.0)
    port = server.servers[0].sockets[0].getsockname()[1]
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        try:
            yield RunningGateway(app=app, base_url=f"http://127.0.0.1:{port}", token=token, client=client)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 20)


async def _broker_connected(app: FastAPI, *, within: float) -> None:
    """Give the background bus connection time to come up, so a test's first webhook does not race
    it; a gateway whose broker is meant to be down simply starts without it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not app.state.gateway.bus.is_connected:  # noqa: ASYNC110 - the bus has no event for it
                await asyncio.sleep(0.02)


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
