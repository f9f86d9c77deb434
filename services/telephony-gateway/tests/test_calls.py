"""Incoming calls end to end on our side: real registry (subprocess), broker, Redis and SQLite.

Twilio's cloud is the only thing played here: the tests post its webhooks, shaped and signed as it
does. The registry helpers are blocking, so they run in threads: the gateway shares this event loop.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from agentline_common.bus import Bus
from agentline_common.events import SessionEnded, SessionRequested, phone_session_id
from agentline_common.registry_client import agent_key, number_key
from agentline_common.testing.services import RegistryService, Tenant, random_e164
from agentline_common.testing.twilio import incoming_form, status_form
from agentline_telephony import twiml
from agentline_telephony.api import INCOMING_PATH, STATUS_PATH
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text

from .conftest import FaultyLink, GatewayFactory, RunningGateway, watch_events

pytestmark = pytest.mark.integration


def parse_twiml(document: str) -> ET.Element:
    """Parse TwiML from our own gateway (trusted input, hence the plain parser)."""
    return ET.fromstring(document)  # noqa: S314


def dialled_uri(document: str) -> str | None:
    sip = parse_twiml(document).find("./Dial/Sip")
    return sip.text if sip is not None else None


def bridge_of(number: str, call_sid: str) -> str:
    """Where the TwiML sends the call: LiveKit's SIP bridge, passing on the caller's CallSid."""
    return f"sip:{number}@127.0.0.1:5060?X-Agentline-CallSid={call_sid}"


def said(document: str) -> str:
    root = parse_twiml(document)
    assert [child.tag for child in root] == ["Say", "Hangup"], document
    return root[0].text or ""


async def gateway_for(
    start_gateway: GatewayFactory, registry: RegistryService, **overrides: Any
) -> RunningGateway:
    return await start_gateway(bus_exchange=registry.exchange, **overrides)


async def tenant(registry: RegistryService, *, active: bool = True) -> Tenant:
    return await asyncio.to_thread(registry.new_tenant, active=active, number=random_e164())


async def test_an_active_agent_gets_the_call_bridged_and_its_session_logged(
    start_gateway: GatewayFactory, running_registry: RegistryService, registry_bus: Bus
) -> None:
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    events = await watch_events(registry_bus, ["session.requested"])
    form = incoming_form(owner.number)

    response = await gateway.post(INCOMING_PATH, form)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert dialled_uri(response.text) == bridge_of(owner.number, form["CallSid"])
    (event,) = await events.wait_for(1)
    assert isinstance(event, SessionRequested)
    session_id = phone_session_id(form["CallSid"])
    assert event.session_id == session_id
    assert (event.agent_id, event.org_id) == (owner.agent_id, owner.org_id)
    assert event.data.kind == "phone"
    assert event.data.call is not None
    assert (event.data.call.sid, event.data.call.from_number, event.data.call.to_number) == (
        form["CallSid"],
        form["From"],
        owner.number,
    )
    logged = await asyncio.to_thread(running_registry.wait_for_session, owner.token, session_id)
    assert logged["kind"] == "phone"
    assert logged["status"] == "requested"
    assert (logged["from_number"], logged["to_number"]) == (form["From"], owner.number)


async def test_sip_credentials_are_sent_when_configured(
    start_gateway: GatewayFactory, running_registry: RegistryService
) -> None:
    owner = await tenant(running_registry)
    assert owner.number is not None
    password = "s" * 40
    gateway = await gateway_for(
        start_gateway, running_registry, sip_username="twilio", sip_password=SecretStr(password)
    )

    response = await gateway.post(INCOMING_PATH, incoming_form(owner.number))

    sip = parse_twiml(response.text).find("./Dial/Sip")
    assert sip is not None
    assert (sip.get("username"), sip.get("password")) == ("twilio", password)


async def test_unknown_numbers_and_inactive_agents_hear_a_polite_goodbye_and_start_nothing(
    start_gateway: GatewayFactory, running_registry: RegistryService, registry_bus: Bus
) -> None:
    inactive = await tenant(running_registry, active=False)
    active = await tenant(running_registry)
    assert inactive.number is not None and active.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    events = await watch_events(registry_bus, ["session.requested"])

    unknown = await gateway.post(INCOMING_PATH, incoming_form(random_e164()))
    refused = await gateway.post(INCOMING_PATH, incoming_form(inactive.number))
    marker = incoming_form(active.number)
    await gateway.post(INCOMING_PATH, marker)  # the one call that does start a session

    assert (unknown.status_code, refused.status_code) == (200, 200)
    assert said(unknown.text) == twiml.UNKNOWN_NUMBER_MESSAGE
    assert said(refused.text) == twiml.AGENT_INACTIVE_MESSAGE
    await events.wait_for(1)
    await asyncio.sleep(1.0)  # room for a stray event to show up
    assert [event.session_id for event in events.events] == [phone_session_id(marker["CallSid"])]


async def test_a_retried_webhook_gets_the_same_answer_and_one_session(
    start_gateway: GatewayFactory, running_registry: RegistryService, registry_bus: Bus
) -> None:
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    events = await watch_events(registry_bus, ["session.requested"])
    form = incoming_form(owner.number)

    first = await gateway.post(INCOMING_PATH, form)
    retries = await asyncio.gather(*(gateway.post(INCOMING_PATH, form) for _ in range(5)))
    marker = incoming_form(owner.number)
    await gateway.post(INCOMING_PATH, marker)

    assert {response.text for response in retries} == {first.text}
    await events.wait_for(2)
    await asyncio.sleep(1.0)
    assert sorted(str(event.session_id) for event in events.events) == sorted(
        str(phone_session_id(sid)) for sid in (form["CallSid"], marker["CallSid"])
    )


async def test_a_call_that_never_reached_its_agent_ends_its_session(
    start_gateway: GatewayFactory, running_registry: RegistryService, registry_bus: Bus
) -> None:
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    events = await watch_events(registry_bus, ["session.ended"])
    form = incoming_form(owner.number)
    await gateway.post(INCOMING_PATH, form)

    dial_failed = await gateway.post(
        STATUS_PATH,
        status_form(form, "in-progress", DialCallStatus="failed", DialCallSid="CA" + "1" * 32),
    )
    repeated = await gateway.post(STATUS_PATH, status_form(form, "failed"))

    assert said(dial_failed.text) == twiml.DIAL_FAILED_MESSAGE
    assert list(parse_twiml(repeated.text)) == []
    (event,) = await events.wait_for(1)
    assert isinstance(event, SessionEnded)
    assert event.session_id == phone_session_id(form["CallSid"])
    assert event.data.reason == "call_failed"
    assert event.data.detail == "twilio call status: failed"
    logged = await asyncio.to_thread(
        running_registry.wait_for_session, owner.token, event.session_id, status="failed"
    )
    assert logged["end_reason"] == "call_failed"
    await asyncio.sleep(1.0)
    assert len(events.events) == 1


async def test_a_deactivated_agent_is_refused_without_waiting_for_the_cache_to_lapse(
    start_gateway: GatewayFactory, running_registry: RegistryService
) -> None:
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    await gateway.post(INCOMING_PATH, incoming_form(owner.number))  # now cached in Redis

    await asyncio.to_thread(running_registry.set_active, owner.token, owner.agent_id, False)
    deadline = time.monotonic() + 5.0  # agent.changed, not the cache's 60 s; loaded machines allowed for
    while True:
        response = await gateway.post(INCOMING_PATH, incoming_form(owner.number))
        if dialled_uri(response.text) is None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)

    assert said(response.text) == twiml.AGENT_INACTIVE_MESSAGE


async def test_registry_stopped_gets_polite_twiml_within_two_seconds(
    start_gateway: GatewayFactory, running_registry: RegistryService
) -> None:
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    await asyncio.to_thread(running_registry.stop)
    try:
        started = time.monotonic()
        response = await gateway.post(INCOMING_PATH, incoming_form(owner.number))
        elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(running_registry.start)

    assert response.status_code == 200
    assert said(response.text) == twiml.UNAVAILABLE_MESSAGE
    assert elapsed < 4.0, f"took {elapsed:.2f} s"  # the look-up's 1.5 s bound, not a hang


async def test_broker_down_still_bridges_the_caller_and_publishes_after_the_restart(
    start_gateway: GatewayFactory,
    running_registry: RegistryService,
    registry_bus: Bus,
    rabbitmq: Any,
) -> None:
    """The agent was looked up a moment ago (cached in Redis); the broker then goes away. The caller
    is bridged at once, and the session reaches the registry once the broker is back."""
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    events = await watch_events(registry_bus, ["session.requested"])
    await gateway.post(INCOMING_PATH, incoming_form(owner.number))
    await events.wait_for(1)
    form = incoming_form(owner.number)

    await asyncio.to_thread(rabbitmq.stop)
    try:
        started = time.monotonic()
        response = await gateway.post(INCOMING_PATH, form)
        elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(rabbitmq.start)

    assert dialled_uri(response.text) == bridge_of(owner.number, form["CallSid"])
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    session_id = phone_session_id(form["CallSid"])
    seen = await events.wait_for(2, timeout=90)
    assert session_id in {event.session_id for event in seen}
    logged = await asyncio.to_thread(running_registry.wait_for_session, owner.token, session_id, timeout=60)
    assert logged["to_number"] == owner.number


async def test_outbox_unwritable_still_gets_twiml_and_no_bridge(
    start_gateway: GatewayFactory, running_registry: RegistryService
) -> None:
    """The store's database fails (here its outbox table is gone): Twilio gets TwiML, never a 500,
    and the caller is not bridged on a session event that could be lost."""
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    async with gateway.app.state.gateway.engine.begin() as connection:
        await connection.execute(text("DROP TABLE telephony_outbox"))

    response = await gateway.post(INCOMING_PATH, incoming_form(owner.number))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert said(response.text) == twiml.UNAVAILABLE_MESSAGE


async def forget_cached_lookups(gateway: RunningGateway, redis_url: str, owner: Tenant) -> None:
    """What the look-up caches' TTL does after a minute: Redis and the process forget the agent."""
    assert owner.number is not None
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete(number_key(owner.number), agent_key(owner.agent_id))
    finally:
        await redis.aclose()
    gateway.app.state.gateway.registry.clear_local_cache()


async def test_broker_down_past_the_lookup_cache_still_bridges_a_number_answered_before(
    start_gateway: GatewayFactory,
    running_registry: RegistryService,
    registry_bus: Bus,
    rabbitmq: Any,
    redis_url: str,
) -> None:
    """SPEC: the caller is never dropped because the bus is down, also once the one-minute look-up
    cache has lapsed: the number's last known agent answers, and the session is published later."""
    owner = await tenant(running_registry)
    assert owner.number is not None
    gateway = await gateway_for(start_gateway, running_registry)
    events = await watch_events(registry_bus, ["session.requested"])
    first_form = incoming_form(owner.number)
    first = await gateway.post(INCOMING_PATH, first_form)
    await events.wait_for(1)
    form = incoming_form(owner.number)

    await asyncio.to_thread(rabbitmq.stop)
    try:
        await forget_cached_lookups(gateway, redis_url, owner)
        response = await gateway.post(INCOMING_PATH, form)
        metrics = await gateway.client.get(f"{gateway.base_url}/metrics")
    finally:
        await asyncio.to_thread(rabbitmq.start)

    assert dialled_uri(first.text) == bridge_of(owner.number, first_form["CallSid"])
    assert dialled_uri(response.text) == bridge_of(owner.number, form["CallSid"])
    assert 'agentline_agent_lookups_total{result="stale"} 1.0' in metrics.text
    seen = await events.wait_for(2, timeout=90)
    assert phone_session_id(form["CallSid"]) in {event.session_id for event in seen}


async def test_a_database_that_stops_answering_still_gets_twiml_within_seconds(
    start_gateway: GatewayFactory,
    running_registry: RegistryService,
    faulty_postgres: tuple[FaultyLink, SecretStr],
) -> None:
    """PostgreSQL accepts connections but never replies: Twilio must still get our TwiML well
    before it gives up (15 s), not its own error, and the caller is not bridged on a lost event."""
    owner = await tenant(running_registry)
    assert owner.number is not None
    link, database_url = faulty_postgres
    gateway = await gateway_for(start_gateway, running_registry, telephony_database_url=database_url)
    link.stall()

    started = time.monotonic()
    response = await gateway.post(INCOMING_PATH, incoming_form(owner.number))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert said(response.text) == twiml.UNAVAILABLE_MESSAGE
    assert elapsed < 10, f"took {elapsed:.1f} s"
