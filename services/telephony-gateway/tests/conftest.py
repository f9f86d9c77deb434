"""Fixtures of the gateway's tests: gateways serving on loopback, numbers, event watchers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agentline_telephony.settings import TelephonySettings
from agentline_telephony.testing import PUBLIC_BASE_URL, GatewayFactory, RunningGateway, serve_gateway
from pydantic import SecretStr


@pytest_asyncio.fixture(loop_scope="session")
async def start_gateway(tmp_path: Path, amqp_url: str, redis_url: str) -> AsyncIterator[GatewayFactory]:
    """Start gateways (a real uvicorn server each, on loopback) with settings overrides.

    Each gets a fresh Twilio auth token, its own SQLite file and, unless told otherwise, an
    exchange of its own.
    """
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningGateway:
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
            return await stack.enter_async_context(serve_gateway(TelephonySettings(**values)))

        yield start
        await asyncio.sleep(0)


@pytest.fixture
def unique_number() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))
