"""The webhooks over real HTTP, with the real broker, Redis and SQLite: signatures, TwiML, probes.

Tests that need agents in the registry live in test_calls.py; here the registry is absent, which the
gateway must treat like a registry that is down.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from agentline_common.testing.servers import RabbitMQServer, free_port, make_base_dir
from agentline_common.testing.twilio import PUBLIC_BASE_URL, incoming_form, status_form
from agentline_telephony import twiml
from agentline_telephony.api import INCOMING_PATH, MAX_BODY_BYTES, STATUS_PATH
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from .conftest import FaultyLink, GatewayFactory, RunningGateway

pytestmark = pytest.mark.integration


def parse_twiml(document: str) -> ET.Element:
    """Parse TwiML from our own gateway (trusted input, hence the plain parser)."""
    return ET.fromstring(document)  # noqa: S314


def said(document: str) -> str:
    root = parse_twiml(document)
    assert [child.tag for child in root] == ["Say", "Hangup"], document
    return root[0].text or ""


async def test_a_missing_signature_is_refused(start_gateway: GatewayFactory, unique_number: str) -> None:
    gateway = await start_gateway()

    response = await gateway.post(INCOMING_PATH, incoming_form(unique_number), signature="")

    assert response.status_code == 403
    assert "X-Twilio-Signature" in response.json()["detail"]


async def test_a_tampered_field_is_refused(start_gateway: GatewayFactory, unique_number: str) -> None:
    gateway = await start_gateway()
    signed = incoming_form(unique_number)
    sent = {**signed, "From": "+14155550999"}

    response = await gateway.post(INCOMING_PATH, sent, signed_form=signed)

    assert response.status_code == 403


async def test_a_signature_over_another_url_is_refused(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    """Signed over the address the request really reached (what the Host header says), not the
    configured public URL: a proxy or a forger controls that, so it must not verify."""
    gateway = await start_gateway()
    form = incoming_form(unique_number)

    host_url = await gateway.post(INCOMING_PATH, form, signed_url=f"{gateway.base_url}{INCOMING_PATH}")
    other_path = await gateway.post(INCOMING_PATH, form, signed_url=f"{PUBLIC_BASE_URL}{STATUS_PATH}")

    assert (host_url.status_code, other_path.status_code) == (403, 403)


async def test_a_signature_with_another_token_is_refused(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    gateway = await start_gateway()
    form = incoming_form(unique_number)
    forged = RequestValidator("x" * 32).compute_signature(f"{PUBLIC_BASE_URL}{INCOMING_PATH}", form)

    response = await gateway.post(INCOMING_PATH, form, signature=forged)

    assert response.status_code == 403


def twilio_signature(token: str, url: str, fields: list[tuple[str, str]]) -> str:
    """Twilio's algorithm, written out: the URL, then each name and value, sorted, HMAC-SHA1 in base64."""
    signed = url + "".join(name + value for name, value in sorted(set(fields)))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


async def test_a_signature_over_the_url_with_its_default_port_verifies(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    """Twilio's own validator accepts the URL with and without its default port; so do we."""
    gateway = await start_gateway()
    form = incoming_form(unique_number)

    response = await gateway.post(INCOMING_PATH, form, signed_url=PUBLIC_BASE_URL + ":443" + INCOMING_PATH)

    assert response.status_code == 200


async def test_every_value_of_a_repeated_field_is_signed(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    gateway = await start_gateway()
    fields = [*incoming_form(unique_number).items(), ("Extra", "first"), ("Extra", "second")]
    signature = twilio_signature(gateway.token, PUBLIC_BASE_URL + INCOMING_PATH, fields)
    dropped = twilio_signature(gateway.token, PUBLIC_BASE_URL + INCOMING_PATH, fields[:-1])

    async def post(signature: str) -> int:
        headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        response = await gateway.client.post(
            f"{gateway.base_url}{INCOMING_PATH}", content=urlencode(fields), headers=headers
        )
        status: int = response.status_code
        return status

    assert await post(signature) == 200
    assert await post(dropped) == 403


async def test_a_signature_that_is_not_ascii_is_refused_not_an_error(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    gateway = await start_gateway()
    form = incoming_form(unique_number)

    response = await gateway.client.post(
        f"{gateway.base_url}{INCOMING_PATH}",
        data=form,
        headers={b"X-Twilio-Signature": "é".encode("latin-1") * 28},
    )

    assert response.status_code == 403


async def test_the_status_callback_is_signed_too(start_gateway: GatewayFactory, unique_number: str) -> None:
    gateway = await start_gateway()
    form = status_form(incoming_form(unique_number), "busy")

    unsigned = await gateway.post(STATUS_PATH, form, signature="")
    signed = await gateway.post(STATUS_PATH, form)

    assert unsigned.status_code == 403
    assert signed.status_code == 200
    assert signed.headers["content-type"].startswith("text/xml")
    assert list(parse_twiml(signed.text)) == []


async def test_no_auth_token_configured_refuses_every_webhook(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    gateway = await start_gateway(twilio_auth_token=None)

    response = await gateway.client.post(
        f"{gateway.base_url}{INCOMING_PATH}",
        data=incoming_form(unique_number),
        headers={"X-Twilio-Signature": "anything"},
    )

    assert response.status_code == 503
    assert "TWILIO_AUTH_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("To", None), ("To", "5551234567"), ("To", "+1 (555) 123-4567"), ("CallSid", None)],
)
async def test_a_signed_but_unusable_form_still_gets_polite_twiml(
    start_gateway: GatewayFactory, unique_number: str, field: str, value: str | None
) -> None:
    gateway = await start_gateway()
    form = incoming_form(unique_number)
    if value is None:
        del form[field]
    else:
        form[field] = value

    response = await gateway.post(INCOMING_PATH, form)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert said(response.text) == twiml.BAD_REQUEST_MESSAGE


async def test_no_registry_answering_gets_polite_twiml_within_the_bound(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    gateway = await start_gateway()  # its exchange has no registry bound to it

    started = time.monotonic()
    response = await gateway.post(INCOMING_PATH, incoming_form(unique_number))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert said(response.text) == twiml.UNAVAILABLE_MESSAGE
    assert elapsed < 5  # bounded (about the 1.5 s look-up limit), never a hang


async def test_health_readiness_and_metrics(start_gateway: GatewayFactory, unique_number: str) -> None:
    gateway = await start_gateway()
    await gateway.post(INCOMING_PATH, incoming_form(unique_number), signature="")
    await gateway.post(INCOMING_PATH, {**incoming_form(unique_number), "To": "oops"})

    health = await gateway.client.get(f"{gateway.base_url}/healthz")
    ready = await gateway.client.get(f"{gateway.base_url}/readyz")
    metrics = await gateway.client.get(f"{gateway.base_url}/metrics")

    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok" and ready.json()["redis"] == "ok"
    text = metrics.text
    assert 'agentline_telephony_webhooks_rejected_total{webhook="incoming"} 1.0' in text
    assert 'agentline_telephony_webhooks_answered_total{outcome="bad_request",webhook="incoming"} 1.0' in text
    assert (
        'agentline_http_request_duration_seconds_count{method="POST",'
        'route="/api/v1/voice/twilio/incoming",status="200"} 1.0'
    ) in text
    assert "agentline_telephony_outbox_pending 0.0" in text
    assert 'agentline_agent_lookups_total{result="miss"}' in text
    assert 'agentline_bus_publishes_total{result="confirmed"}' in text


async def test_the_openapi_document_lists_both_webhooks_with_their_signed_form(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()

    paths = (await gateway.client.get(f"{gateway.base_url}/openapi.json")).json()["paths"]

    for path in (INCOMING_PATH, STATUS_PATH):
        operation = paths[path]["post"]
        assert operation["tags"] == ["twilio"]
        assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
        assert [parameter["name"] for parameter in operation["parameters"]] == ["X-Twilio-Signature"]


async def test_redis_down_is_reported_but_the_gateway_stays_ready_and_answers(
    start_gateway: GatewayFactory, unique_number: str
) -> None:
    """A webhook needs no Redis (look-ups go to the registry, answers are computed anew), so a Redis
    outage must not take the gateway out of service: Twilio would get a 503 instead of TwiML."""
    gateway = await start_gateway(redis_url=SecretStr(f"redis://127.0.0.1:{free_port()}/0"))

    started = time.monotonic()
    ready = await gateway.client.get(f"{gateway.base_url}/readyz")
    probe_seconds = time.monotonic() - started
    webhook = await gateway.post(INCOMING_PATH, incoming_form(unique_number))

    assert ready.status_code == 200
    assert ready.json() == {"database": "ok", "redis": "unavailable", "broker": "ok"}
    assert probe_seconds < 5
    assert webhook.status_code == 200
    assert webhook.headers["content-type"].startswith("text/xml")


async def test_metrics_answer_while_the_database_refuses_connections(
    start_gateway: GatewayFactory, faulty_postgres: tuple[FaultyLink, SecretStr]
) -> None:
    link, database_url = faulty_postgres
    gateway = await start_gateway(telephony_database_url=database_url)
    await link.refuse()

    metrics = await gateway.client.get(f"{gateway.base_url}/metrics")
    ready = await gateway.client.get(f"{gateway.base_url}/readyz")

    assert metrics.status_code == 200
    assert "agentline_telephony_outbox_publish_failures" in metrics.text
    assert ready.status_code == 503
    assert ready.json()["database"] == "unavailable"


async def test_a_body_larger_than_any_twilio_form_is_refused_unread(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    url = f"{gateway.base_url}{INCOMING_PATH}"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}
    oversized = b"a=" + b"b" * MAX_BODY_BYTES

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(oversized), 8192):
            yield oversized[start : start + 8192]

    declared = await gateway.client.post(url, content=oversized, headers=headers)
    chunked = await gateway.client.post(url, content=streamed(), headers=headers)

    assert declared.status_code == chunked.status_code == 413
    assert "larger than 65536 bytes" in declared.json()["detail"]


async def readiness_once(
    gateway: RunningGateway, wanted: Callable[[int, dict[str, Any]], bool], *, within: float
) -> tuple[int, dict[str, Any]]:
    """Poll /readyz until its status and body are `wanted`; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            response = await gateway.client.get(f"{gateway.base_url}/readyz")
            if wanted(response.status_code, response.json()):
                return response.status_code, response.json()
            await asyncio.sleep(0.1)


async def test_readiness_waits_for_the_first_broker_connection_only(start_gateway: GatewayFactory) -> None:
    """Started while its broker is down, the gateway is unready and says why: it could not look up an
    agent that is not cached yet. Once the broker is up it is ready, and a later broker outage leaves
    it ready, because calls are still answered (from the cache, events kept in the outbox)."""
    base_dir = make_base_dir("telephony-readiness-rabbitmq")
    broker = RabbitMQServer(base_dir=base_dir)
    try:
        gateway = await start_gateway(
            amqp_url=SecretStr(broker.url),
            broker_ready_grace_seconds=600.0,  # a broker slow to boot on a loaded machine is still awaited
            wait_for_broker=False,
        )
        started = time.monotonic()
        before = await gateway.client.get(f"{gateway.base_url}/readyz")
        probe_seconds = time.monotonic() - started

        await asyncio.to_thread(broker.start)
        ready = await readiness_once(gateway, lambda status, _: status == 200, within=120)
        await asyncio.to_thread(broker.stop)
        outage = await readiness_once(gateway, lambda _, body: body["broker"] == "unavailable", within=30)
    finally:
        await asyncio.to_thread(broker.close)
        shutil.rmtree(base_dir, ignore_errors=True)

    assert before.status_code == 503
    assert before.json()["broker"] == "connecting"
    assert "waiting for the first broker connection" in before.json()["detail"]
    assert before.json()["database"] == before.json()["redis"] == "ok"
    assert probe_seconds < 4.0  # bounded: the probe never waits for the broker itself
    assert ready == (200, {"database": "ok", "redis": "ok", "broker": "ok"})
    assert outage[0] == 200 and "detail" not in outage[1]


async def test_readiness_stops_waiting_for_the_broker_after_the_grace(start_gateway: GatewayFactory) -> None:
    """A broker that never comes up must not keep the gateway out of service for good."""
    gateway = await start_gateway(
        amqp_url=SecretStr(f"amqp://guest:guest@127.0.0.1:{free_port()}/"),
        broker_ready_grace_seconds=5.0,
        wait_for_broker=False,
    )

    first = await gateway.client.get(f"{gateway.base_url}/readyz")
    ready = await readiness_once(gateway, lambda status, _: status == 200, within=15)

    assert first.status_code == 503 and first.json()["broker"] == "connecting"
    assert ready == (200, {"database": "ok", "redis": "ok", "broker": "unavailable"})
