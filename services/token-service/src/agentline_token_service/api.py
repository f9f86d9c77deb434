"""HTTP routes: the Test Agent token, LiveKit's webhook, and the probes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import httpx
import structlog
from agentline_common.auth import InvalidToken, JwksVerifier, KeysUnavailable, UserClaims
from agentline_common.bus import Bus
from agentline_common.http import metrics_response, read_body
from agentline_common.registry_client import AgentNotFound, RegistryClient, RegistryUnavailable
from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.json_format import ParseError
from livekit import api as livekit_api
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agentline_token_service.metrics import Metrics
from agentline_token_service.service import (
    AgentInactive,
    DependencyUnavailable,
    LiveKitNotConfigured,
    MissingAgentRequests,
    NotAMember,
    RateLimited,
    TestTokenError,
    handle_livekit_event,
    issue_test_token,
)
from agentline_token_service.settings import TokenServiceSettings
from agentline_token_service.stores import RedisTestCalls

log = structlog.get_logger()

MAX_WEBHOOK_BYTES = 1 << 20
_BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Runtime:
    """The clients built in the lifespan, handed to routes as one dependency."""

    settings: TokenServiceSettings
    bus: Bus
    redis: Redis
    http: httpx.AsyncClient
    registry: RegistryClient
    verifier: JwksVerifier
    calls: RedisTestCalls
    missing_agents: MissingAgentRequests
    webhook_receiver: livekit_api.WebhookReceiver | None
    metrics: Metrics


class TestTokenRead(BaseModel):
    """What the browser needs to join the test call."""

    __test__ = False
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    token: str = Field(description="LiveKit access token for this one room, valid until `expiresAt`.")
    server_url: str = Field(description="The LiveKit WebSocket URL to connect to.")
    room_name: str
    expires_at: datetime


class ErrorRead(BaseModel):
    detail: str


def runtime_of(request: Request) -> Runtime:
    """The runtime of the app serving `request`.

    The token route calls this and `current_user` itself instead of declaring them as FastAPI
    dependencies, as the telephony webhooks do: resolving them cost more CPU per token than the
    user's (cached) token check.
    """
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a hop per request."""
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

BEARER_HEADER: dict[str, Any] = {
    "parameters": [
        {
            "name": "Authorization",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "`Bearer <access token>`, the token from /api/v1/auth/login.",
        }
    ]
}
"""What the OpenAPI document says the token route takes (read by `current_user`)."""


async def current_user(request: Request, verifier: JwksVerifier) -> UserClaims:
    """The signed-in user, from `Authorization: Bearer <token>` checked against the registry's JWKS."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise HTTPException(
            401,
            "missing credentials: send 'Authorization: Bearer <access token>' from /api/v1/auth/login",
            headers=_BEARER,
        )
    try:
        return await verifier.verify(credentials)
    except InvalidToken as error:
        raise HTTPException(
            401, f"access token not accepted ({error}); log in again", headers=_BEARER
        ) from error
    except KeysUnavailable as error:
        raise HTTPException(
            503,
            "the registry's signing keys cannot be fetched, so no token can be checked; try again shortly",
        ) from error


router = APIRouter()
api = APIRouter(prefix="/api/v1")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorRead, "description": description}
    for status, description in {
        401: "No or bad credentials.",
        403: "Not a member of the agent's organisation.",
        404: "No such agent.",
        409: "The agent is inactive.",
        422: "agent_id is not a UUID.",
        429: "Too many test calls; see Retry-After.",
        503: "LiveKit not configured, or the registry, broker or Redis unreachable.",
    }.items()
}


@api.post(
    "/agents/{agent_id}/test-token",
    response_model=TestTokenRead,
    responses=_ERRORS,
    summary="Get a token to talk to an agent in the browser",
    openapi_extra=BEARER_HEADER,
)
async def create_test_token(agent_id: UUID, request: Request) -> TestTokenRead:
    """A LiveKit token for a fresh test room of the agent, with the agent dispatched into it.

    The session is announced on the bus (`session.requested`) before the token is returned.
    """
    runtime = runtime_of(request)
    token = await issue_test_token(
        runtime.settings,
        user=await current_user(request, runtime.verifier),
        agent_id=agent_id,
        agents=runtime.registry,
        admission=runtime.calls,
        publisher=runtime.bus,
        missing=runtime.missing_agents,
    )
    runtime.metrics.tokens_issued.inc()
    return TestTokenRead(
        token=token.token,
        server_url=token.server_url,
        room_name=token.room_name,
        expires_at=token.expires_at,
    )


@api.post(
    "/livekit/webhook",
    responses={
        401: {"model": ErrorRead, "description": "Missing or bad signature."},
        503: {"model": ErrorRead, "description": "Not configured, or the broker is unreachable."},
    },
    summary="LiveKit webhooks",
)
async def livekit_webhook(
    request: Request,
    runtime: RuntimeDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, str]:
    """Receives LiveKit's signed webhooks; a finished test room ends its session."""
    receiver = runtime.webhook_receiver
    if receiver is None:
        raise LiveKitNotConfigured(
            "LiveKit is not configured on the token-service, so webhooks cannot be verified: "
            "set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
        )
    if not authorization:
        raise HTTPException(401, "missing Authorization header: LiveKit signs every webhook")
    raw = await read_body(request, limit=MAX_WEBHOOK_BYTES)
    try:
        body = raw.decode()
        webhook = receiver.receive(body, authorization.removeprefix("Bearer "))
    except (UnicodeDecodeError, ParseError) as error:
        raise HTTPException(400, "webhook body is not a LiveKit WebhookEvent in JSON") from error
    except Exception as error:  # the receiver raises bare Exception and PyJWT errors alike
        log.warning("webhook.rejected", error=type(error).__name__)
        raise HTTPException(
            401,
            "webhook signature rejected: it must be signed with this LiveKit API key and "
            "secret and carry the body's sha256",
        ) from error
    runtime.metrics.webhooks.labels(event=webhook.event or "unknown").inc()
    ended = await handle_livekit_event(
        webhook,
        rooms=runtime.calls,
        publisher=runtime.bus,
        timeout=runtime.settings.dependency_timeout_seconds,
    )
    return {"status": "session_ended" if ended else "ignored"}


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process answers; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"model": ErrorRead}})
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    """Ready when the broker connection is open and Redis answers."""
    if not runtime.bus.is_connected:
        raise HTTPException(503, "not connected to the message broker")
    try:
        async with asyncio.timeout(runtime.settings.dependency_timeout_seconds):
            await runtime.redis.ping()
    except (RedisError, TimeoutError, OSError) as error:
        raise HTTPException(503, "Redis does not answer") from error
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return metrics_response(runtime.metrics.registry)


router.include_router(api)

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (LiveKitNotConfigured, 503),
    (NotAMember, 403),
    (AgentInactive, 409),
    (RateLimited, 429),
    (DependencyUnavailable, 503),
    (AgentNotFound, 404),
    (RegistryUnavailable, 503),
)


async def refusal_response(request: Request, error: Exception) -> JSONResponse:
    """Turn a refusal of the service into its status code and a `detail` a person can act on."""
    status = next((code for kind, code in _STATUS if isinstance(error, kind)), 503)
    detail = str(error)
    if isinstance(error, AgentNotFound):
        detail = f"no agent with id {request.path_params.get('agent_id', '')}"
    elif isinstance(error, RegistryUnavailable):
        detail = "the agent registry could not be reached in time; try again in a few seconds"
    headers = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after_seconds)
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.token_refusals.labels(reason=type(error).__name__).inc()
    log.info("token.refused", status=status, reason=type(error).__name__)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


REFUSALS: tuple[type[Exception], ...] = (TestTokenError, AgentNotFound, RegistryUnavailable)


async def validation_response(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, with one sentence naming the field instead of a list of pydantic errors."""
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item.get("loc", ())[1:]) or "request"
        if field == "agent_id":
            problems.append(
                f"agent_id must be an agent's UUID, like 0b8f3c52-6f0e-4c4a-9a53-3d2d6b1f9a10; "
                f"got {str(item.get('input', ''))[:64]!r}"
            )
        else:
            problems.append(f"{field}: {item.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)
