"""Twilio webhook answers per second and p99 at 32 concurrent signed posts, next to a bare endpoint.

Everything is real and on loopback: RabbitMQ, Redis, the registry (subprocess) and the gateway
(subprocess, its console script, SQLite store). Each post is a new call (new CallSid) to an active
agent whose look-up is warm in Redis, so every answer runs the whole path: signature check, CallSid
store, cached look-up, TwiML, and the answer with its `session.requested` committed to the outbox.
The bare endpoint is the same process's `GET /healthz`, measured in the same run with the same client,
so the ratio shows what the webhook's work costs on this machine. The forms are encoded and signed
before the clock starts, as Twilio does them on its own machines; encoding each form in this client
during the run took CPU the gateway then lacked (about 0.3 ms per webhook).

Wall-clock figures move with whatever else the machine runs; CPU time per request does much less, so
the gateway's CPU per request (all its threads, the outbox relay included, counted until the outbox
is drained) and the whole machine's (registry, broker, Redis and this client too) are reported beside
them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import aiohttp
import httpx
from agentline_common.logging import configure_logging
from agentline_common.testing.bench import LoadResult, cpu_seconds, record, run_load
from agentline_common.testing.servers import (
    ManagedProcess,
    RabbitMQServer,
    RedisServer,
    child_environment,
    free_port,
    make_base_dir,
    wait_until,
)
from agentline_common.testing.services import RegistryService, random_e164
from agentline_common.testing.twilio import PUBLIC_BASE_URL, incoming_form
from agentline_telephony.api import FORM_MEDIA_TYPE, INCOMING_PATH
from twilio.request_validator import RequestValidator

CONCURRENCY = 32
REQUESTS = 3000
WARMUP = 200
P99_GOAL_MS = 30.0
THROUGHPUT_GOAL_RATIO = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DRAIN_TIMEOUT = 60.0


def machine_cpu_seconds() -> float:
    """CPU time every core spent busy since boot (idle and I/O wait left out)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class CpuCost(NamedTuple):
    """CPU milliseconds per request, of the gateway process and of the whole machine."""

    gateway_ms: float
    machine_ms: float


def gateway_command() -> list[str]:
    script = shutil.which("agentline-telephony", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "agentline_telephony"]


def start_gateway(*, base_dir: Path, registry: RegistryService, token: str, port: int) -> ManagedProcess:
    process = ManagedProcess(
        name="agentline-telephony",
        argv=gateway_command(),
        log_path=base_dir / "telephony.log",
        env=child_environment(
            {
                "ENVIRONMENT": "production",
                "LOG_LEVEL": "INFO",
                "AMQP_URL": registry.amqp_url,
                "REDIS_URL": registry.redis_url,
                "BUS_EXCHANGE": registry.exchange,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                "TWILIO_AUTH_TOKEN": token,
                "TELEPHONY_DATABASE_URL": f"sqlite+aiosqlite:///{base_dir / 'telephony.db'}",
            }
        ),
        cwd=base_dir,
    )
    process.spawn()

    def ready() -> bool:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("broker") == "ok"

    wait_until(ready, what="agentline-telephony", process=process, timeout=60)
    return process


def signed_posts(number: str, token: str, count: int) -> list[tuple[bytes, str]]:
    """Encoded forms of `count` distinct calls with their signatures, made before the clock starts.

    Encoding and signing are Twilio's work, done on Twilio's machines: here they would take CPU from
    the gateway (aiohttp encoding a 27-field form cost this client more than answering /healthz does).
    """
    validator = RequestValidator(token)
    url = f"{PUBLIC_BASE_URL}{INCOMING_PATH}"
    forms = [incoming_form(number) for _ in range(count)]
    return [(urlencode(form).encode(), validator.compute_signature(url, form)) for form in forms]


async def outbox_drained(session: aiohttp.ClientSession, base_url: str) -> None:
    """Wait until the gateway's relay has published every stored event (its CPU counts too)."""
    async with asyncio.timeout(DRAIN_TIMEOUT):
        while True:
            async with session.get(f"{base_url}/metrics") as response:
                if "agentline_telephony_outbox_pending 0.0" in await response.text():
                    return
            await asyncio.sleep(0.1)


async def measure(
    base_url: str, number: str, token: str, gateway_pid: int
) -> tuple[LoadResult, LoadResult, CpuCost, CpuCost]:
    posts = signed_posts(number, token, WARMUP + REQUESTS)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def bare() -> None:
            async with session.get(f"{base_url}/healthz") as response:
                await response.read()
                assert response.status == 200

        async def webhook() -> None:
            body, signature = posts.pop()
            headers = {"Content-Type": FORM_MEDIA_TYPE, "X-Twilio-Signature": signature}
            async with session.post(f"{base_url}{INCOMING_PATH}", data=body, headers=headers) as response:
                body = await response.text()
                assert response.status == 200 and "<Sip>" in body, body

        async def costed(call: Callable[[], Awaitable[None]], *, settle: bool) -> tuple[LoadResult, CpuCost]:
            gateway, machine = cpu_seconds(gateway_pid), machine_cpu_seconds()
            result = await run_load(call, total=REQUESTS, concurrency=CONCURRENCY)
            if settle:
                await outbox_drained(session, base_url)
            cost = CpuCost(
                gateway_ms=(cpu_seconds(gateway_pid) - gateway) * 1000 / result.count,
                machine_ms=(machine_cpu_seconds() - machine) * 1000 / result.count,
            )
            return result, cost

        await run_load(bare, total=WARMUP, concurrency=CONCURRENCY)
        await run_load(webhook, total=WARMUP, concurrency=CONCURRENCY)
        await outbox_drained(session, base_url)
        bare_result, bare_cost = await costed(bare, settle=False)
        webhook_result, webhook_cost = await costed(webhook, settle=True)
    return bare_result, webhook_result, bare_cost, webhook_cost


async def run() -> list[dict[str, Any]]:
    configure_logging(service="bench", json=False, level="WARNING")
    base_dir = make_base_dir("bench-telephony")
    broker = RabbitMQServer(base_dir=make_base_dir("bench-telephony-rabbitmq"))
    redis = RedisServer(base_dir=make_base_dir("bench-telephony-redis"))
    await asyncio.gather(asyncio.to_thread(broker.start), asyncio.to_thread(redis.start))
    registry = RegistryService(
        amqp_url=broker.url,
        redis_url=redis.url,
        exchange=f"bench-{secrets.token_hex(6)}",
        base_dir=make_base_dir("bench-telephony-registry"),
    )
    gateway: ManagedProcess | None = None
    try:
        await asyncio.to_thread(registry.prepare)
        await asyncio.to_thread(registry.start)
        tenant = await asyncio.to_thread(registry.new_tenant, number=random_e164())
        assert tenant.number is not None
        token = secrets.token_urlsafe(32)
        port = free_port()
        gateway = await asyncio.to_thread(
            start_gateway, base_dir=base_dir, registry=registry, token=token, port=port
        )
        assert gateway.process is not None
        bare, webhook, bare_cost, webhook_cost = await measure(
            f"http://127.0.0.1:{port}", tenant.number, token, gateway.process.pid
        )
    finally:
        if gateway is not None:
            await asyncio.to_thread(gateway.terminate)
        await asyncio.to_thread(registry.stop)
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(broker.close)
        shutil.rmtree(base_dir, ignore_errors=True)
    ratio = webhook.per_second / bare.per_second
    return [
        record("telephony.bare_healthz.throughput", bare.per_second, "req/s"),
        record("telephony.bare_healthz.p99", bare.p99, "ms"),
        record("telephony.bare_healthz.cpu_gateway", bare_cost.gateway_ms, "ms/req"),
        record("telephony.bare_healthz.cpu_machine", bare_cost.machine_ms, "ms/req"),
        record("telephony.webhook_incoming.throughput", webhook.per_second, "req/s"),
        record("telephony.webhook_incoming.p50", webhook.p50, "ms"),
        record("telephony.webhook_incoming.cpu_gateway", webhook_cost.gateway_ms, "ms/req"),
        record("telephony.webhook_incoming.cpu_machine", webhook_cost.machine_ms, "ms/req"),
        record(
            "telephony.webhook_incoming.p99",
            webhook.p99,
            "ms",
            goal=f"< {P99_GOAL_MS:g} ms",
            met=webhook.p99 < P99_GOAL_MS,
        ),
        record(
            "telephony.webhook_incoming.vs_bare",
            ratio,
            "x",
            goal=f">= {THROUGHPUT_GOAL_RATIO}x bare",
            met=ratio >= THROUGHPUT_GOAL_RATIO,
        ),
    ]
