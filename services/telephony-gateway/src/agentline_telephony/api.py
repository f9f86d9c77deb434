"""HTTP routes: Twilio's voice webhooks, health, readiness and metrics.

Every webhook is authenticated by its X-Twilio-Signature, computed by Twilio over the URL it called
(our configured public URL, never the Host header, which a proxy rewrites and anyone can forge) and
the form fields. A request that does not verify gets 403 and nothing else; one that verifies always
gets TwiML, whatever its form says, because Twilio plays an error to the caller otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl

import structlog
from agentline_common.bus import Bus
from agentline_common.http import metrics_response, read_body
from agentline_common.outbox import OutboxRelay
from agentline_common.registry_client import RegistryClient
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.request_validator import RequestValidator

from agentline_telephony import service
from agentline_telephony.metrics import GatewayMetrics
from agentline_telephony.repository import RedisOutboxCallStore
from agentline_telephony.twiml import TWIML_MEDIA_TYPE, SipTarget

log = structlog.get_logger()

SIGNATURE_HEADER = "X-Twilio-Signature"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 200
MAX_BODY_BYTES = 64 * 1024
"""Twilio's webhook forms are a few hundred bytes; anything far larger is not Twilio, and is refused
before it is read into memory (the signature can only be checked once the body is read)."""
READINESS_TIMEOUT = 1.0

_STRING = {"type": "string"}
TWILIO_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {FORM_MEDIA_TYPE: {"schema": {"type": "object", "additionalProperties": _STRING}}},
    },
    "parameters": [{"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": _STRING}],
}
"""What the OpenAPI document says the webhooks take: Twilio's signed form (read by `verified_form`)."""

INCOMING_PATH = "/api/v1/voice/twilio/incoming"
STATUS_PATH = "/api/v1/voice/twilio/status"


@dataclass(frozen=True, slots=True)
class BrokerGrace:
    """How long readiness waits for the first broker connection, counted from `started` (loop time)."""

    started: float
    seconds: float

    def over(self, now: float) -> bool:
        return now - self.started >= self.seconds


@dataclass
class Gateway:
    """Everything the routes use, built once in the app's lifespan."""

    public_base_url: str
    validator: RequestValidator | None
    target: SipTarget
    session_ttl: timedelta
    registry: RegistryClient
    """Falls back on each number's last known agent when the registry cannot answer."""
    calls: RedisOutboxCallStore
    relay: OutboxRelay
    bus: Bus
    redis: Redis
    engine: AsyncEngine
    metrics: GatewayMetrics
    broker_reached: asyncio.Event
    """Set once the first broker connection is up and the look-up cache is subscribed to changes."""
    broker_grace: BrokerGrace


def gateway_of(request: Request) -> Gateway:
    """The gateway of the app serving `request`.

    The webhooks call this and `verified_form` themselves instead of declaring them as FastAPI
    dependencies: resolving dependencies cost a webhook more CPU than its signature check.
    """
    gateway: Gateway = request.app.state.gateway
    return gateway


async def get_gateway(request: Request) -> Gateway:
    """Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a hop per request."""
    return gateway_of(request)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def signed_url(public_base_url: str, request: Request) -> str:
    """The URL Twilio signed: our public base URL plus the path and query it requested.

    Read from the ASGI scope: `request.url` parses a whole URL out of it for each request.
    """
    query = request.scope["query_string"].decode("latin-1")
    return f"{public_base_url}{request.scope['path']}" + (f"?{query}" if query else "")


class SignedFields(dict[str, list[str]]):
    """Every value of each form field, as twilio's RequestValidator reads a multi-dict (`getall`).

    A Starlette form has no `getall`, and the validator finds that out by catching an AttributeError
    per field, twice per request: that alone cost more than the rest of the signature check.
    """

    def getall(self, name: str) -> list[str]:
        return self[name]


def signature_valid(validator: RequestValidator, *, url: str, fields: SignedFields, signature: str) -> bool:
    """Whether Twilio signed `fields` posted to `url`.

    The signature over the URL exactly as configured is checked first, in constant time: that is
    what Twilio signs, and it costs one HMAC. Only when it does not match does `validate` try the
    URL with and without its default port, as Twilio's library accepts either.
    """
    expected = validator.compute_signature(url, fields)
    if hmac.compare_digest(expected.encode(), signature.encode()):
        return True
    return bool(validator.validate(url, fields, signature))


async def read_form(request: Request) -> list[tuple[str, str]]:
    """The urlencoded form's fields as Twilio sent them, in order (repeated fields too: all are signed)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        return []
    body = await read_body(request, limit=MAX_BODY_BYTES)
    try:
        return parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # undecodable bytes, or more fields than any Twilio webhook has
        return []


async def verified_form(request: Request, gateway: Gateway) -> dict[str, str]:
    """The webhook's form (the last value of a repeated field), once its Twilio signature verifies."""
    webhook = request.scope["path"].rsplit("/", 1)[-1]
    if gateway.validator is None:
        raise HTTPException(503, "TWILIO_AUTH_TOKEN is not configured: webhooks cannot be verified")
    fields = await read_form(request)
    signed = SignedFields()
    for name, value in fields:
        signed.setdefault(name, []).append(value)
    signature = request.headers.get(SIGNATURE_HEADER, "")
    url = signed_url(gateway.public_base_url, request)
    if not signature or not signature_valid(gateway.validator, url=url, fields=signed, signature=signature):
        gateway.metrics.webhooks_rejected.labels(webhook).inc()
        log.warning("twilio.signature_rejected", webhook=webhook, signed=bool(signature))
        raise HTTPException(403, f"missing or invalid {SIGNATURE_HEADER}")
    return dict(fields)


class WebhookRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI's own handler resolves the endpoint's parameters and dependencies and serialises its
    return value on every request; a webhook has none of either, and that machinery cost it about as
    much as its signature check. The route stays an APIRoute, so the OpenAPI document still lists it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


router = APIRouter()
webhooks = APIRouter(route_class=WebhookRoute, tags=["twilio"])


def twiml_response(body: str) -> Response:
    return Response(content=body, media_type=TWIML_MEDIA_TYPE)


@webhooks.post(INCOMING_PATH, response_class=Response, openapi_extra=TWILIO_FORM)
async def incoming_call(request: Request) -> Response:
    """Twilio's voice webhook for a call to one of our numbers.

    Answers TwiML that bridges the call to LiveKit SIP when the number's agent is active, and a polite
    message with a hang-up otherwise (unknown number, inactive agent, registry not answering, unusable
    form). A retried webhook (same CallSid) gets the first answer again and starts no second session.
    """
    gateway = gateway_of(request)
    form = await verified_form(request, gateway)
    answer = await service.answer_incoming(
        form,
        lookup=gateway.registry,
        calls=gateway.calls,
        target=gateway.target,
        ttl=gateway.session_ttl,
    )
    if answer.event is not None:
        gateway.relay.wake()
    gateway.metrics.webhooks_answered.labels("incoming", answer.outcome.value).inc()
    return twiml_response(answer.twiml)


@webhooks.post(STATUS_PATH, response_class=Response, openapi_extra=TWILIO_FORM)
async def call_status(request: Request) -> Response:
    """Twilio's call status callback and the <Dial> action.

    A call that never reached its agent (busy, failed, no-answer, canceled) ends its session with
    reason `call_failed`; after a failed bridge the caller hears why before the hang-up.
    """
    gateway = gateway_of(request)
    form = await verified_form(request, gateway)
    body, ended = await service.handle_status(form, calls=gateway.calls)
    if ended:
        gateway.relay.wake()
    gateway.metrics.webhooks_answered.labels("status", "session_ended" if ended else "noted").inc()
    return twiml_response(body)


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(gateway: GatewayDep, response: Response) -> dict[str, str]:
    """Readiness: what a webhook needs. The call store answers, and the broker was reached.

    Redis is reported but not required: without it a webhook still gets its answer (look-ups go to
    the registry, a retried webhook is answered anew and its event is refused once by the outbox),
    and taking the gateway out of service would get Twilio a 503 instead of TwiML.

    Until its first broker connection the gateway cannot look up an agent that is not cached yet, so
    it stays unready for at most `BROKER_READY_GRACE_SECONDS`; past that, or once connected, a broker
    outage does not make it unready: calls are answered meanwhile (look-ups from the caches and the
    last known answers, events kept in the outbox), and taking the gateway out of service would drop them.
    """
    database, redis = await asyncio.gather(
        _check(_ping_database(gateway.engine)), _check(_ping_redis(gateway.redis))
    )
    broker = broker_state(
        reached=gateway.broker_reached.is_set(),
        connected=gateway.bus.is_connected,
        grace_over=gateway.broker_grace.over(asyncio.get_running_loop().time()),
    )
    checks = {"database": database, "redis": redis, "broker": broker}
    problems = ["database unavailable"] if database != "ok" else []
    if broker == BROKER_CONNECTING:
        problems.append(
            "waiting for the first broker connection (agent look-ups need it), "
            f"at most {gateway.broker_grace.seconds:g} s after start-up"
        )
    if problems:
        response.status_code = 503
        checks["detail"] = "; ".join(problems)
    return checks


BROKER_CONNECTING = "connecting"


def broker_state(*, reached: bool, connected: bool, grace_over: bool) -> str:
    """The broker's line in /readyz: "connecting" (unready) only before its first connection, and
    only while the start-up grace lasts; otherwise "ok" or "unavailable", which leaves it ready."""
    if connected and reached:
        return "ok"
    if not reached and not grace_over:
        return BROKER_CONNECTING
    return "unavailable"


@router.get("/metrics", tags=["operations"])
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus metrics: webhooks answered, latency histogram, outbox backlog, cache hit rate."""
    try:
        gateway.metrics.outbox_pending.set(await asyncio.wait_for(gateway.relay.pending(), READINESS_TIMEOUT))
    except (SQLAlchemyError, OSError) as error:  # OSError: asyncpg's refusals and TimeoutError
        log.warning("metrics.outbox_unreadable", error=type(error).__name__)
    gateway.metrics.outbox_publish_failures.set(gateway.relay.failures)
    return metrics_response(gateway.metrics.registry)


async def _ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _ping_redis(redis: Redis) -> None:
    await redis.ping()


async def _check(probe: Coroutine[Any, Any, None]) -> str:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT)
    except (SQLAlchemyError, RedisError, OSError, TimeoutError):
        return "unavailable"
    return "ok"
