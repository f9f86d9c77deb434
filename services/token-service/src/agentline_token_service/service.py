"""What the token-service decides: who may test which agent, what the token allows, which events follow.

The token is minted by `generate_test_token`, a pure function of the settings and the ids. Issuing one
(`issue_test_token`) checks the user and the agent, then hands out a token only after the broker has
confirmed the `session.requested` event, so every token in a browser has a session in the registry.
The clients it needs come in as parameters behind small Protocols.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import structlog
from agentline_common.agents import AgentConfig
from agentline_common.auth import UserClaims
from agentline_common.bus import PublishError
from agentline_common.events import (
    SESSION_NAMESPACE,
    Event,
    SessionEnded,
    SessionEndedData,
    SessionRequested,
    SessionRequestedData,
)
from agentline_common.logging import current_correlation_id
from agentline_common.rate_limits import RateDecision
from agentline_common.registry_client import AgentNotFound
from agentline_common.rooms import InvalidRoomName, TestRoom, new_test_room, parse_room_name
from livekit import api as livekit_api
from pydantic import BaseModel, ConfigDict

from agentline_token_service.settings import TokenServiceSettings

log = structlog.get_logger()

MICROPHONE_SOURCE = "microphone"
ROOM_FINISHED = "room_finished"


class TestTokenError(Exception):
    """A request the service refuses; the message is shown to the person who asked."""

    __test__ = False


class LiveKitNotConfigured(TestTokenError):
    """No LiveKit URL, API key or secret: no token can be minted."""


class NotAMember(TestTokenError):
    """The user has no role in the agent's organisation."""


class MemberRemoved(NotAMember):
    """The registry removed the user from the organisation after their access token was issued: the
    token's `orgs` claim still names it, for up to the token's lifetime."""


class AgentInactive(TestTokenError):
    """The agent exists but is switched off."""


class RateLimited(TestTokenError):
    """The user asked for more tokens than the window allows."""

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class DependencyUnavailable(TestTokenError):
    """The broker, Redis or the registry did not answer within the bound; try again later."""


@dataclass(frozen=True, slots=True)
class TestToken:
    """A minted token and what the browser needs to use it."""

    __test__ = False

    token: str
    server_url: str
    room_name: str
    identity: str
    expires_at: datetime


class SessionRef(BaseModel):
    """Which session a test room belongs to, kept so the webhook can close it later."""

    model_config = ConfigDict(frozen=True)

    session_id: UUID
    agent_id: UUID
    org_id: UUID


class AgentDirectory(Protocol):
    async def get_agent(self, agent_id: UUID) -> AgentConfig: ...


class EventPublisher(Protocol):
    async def publish(self, event: Event, *, timeout: float = ...) -> None: ...


class CallAdmission(Protocol):
    """Counts a test call against `subject`'s limit and, only if it is admitted, records which session
    `room_name` belongs to, in the same step: a refused call leaves no mapping behind. A call is
    refused first of all if `user` was removed from the agent's organisation after `token_issued_at`
    (the token's `orgs` claim is as old as the token, up to 15 minutes): it raises MemberRemoved."""

    async def admit(
        self, subject: str, *, room_name: str, ref: SessionRef, user: UUID, token_issued_at: int
    ) -> RateDecision: ...


class MissingAgentRequests:
    """Per user, this process's recent requests for agents that do not exist, at most `limit` per
    `window_seconds`; past it the user is answered 429 before any look-up.

    An unknown agent is never cached, so each such request costs the registry a round trip, and a
    user asking for made-up ids could load it for everyone (phone calls whose look-up lapsed
    included). The admitted calls' limit is in Redis, shared by every replica, and counted only
    once a call is allowed, so that a token costs one Redis step; this guard costs the normal path
    nothing, and so is per process (each replica allows `limit`).
    """

    def __init__(
        self,
        *,
        limit: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 10_000,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._max_users = max_users
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, subject: str) -> int:
        """Whole seconds until `subject` may ask again; 0 when it may now."""
        if subject not in self._seen:  # nearly every token's case: nothing to trim
            return 0
        recent = self._recent(subject)
        if len(recent) < self._limit:
            return 0
        return max(1, math.ceil(recent[0] + self._window - self._clock()))

    def record(self, subject: str) -> None:
        recent = self._recent(subject)
        recent.append(self._clock())
        self._seen[subject] = recent
        self._seen.move_to_end(subject)
        while len(self._seen) > self._max_users:
            self._seen.popitem(last=False)

    def _recent(self, subject: str) -> deque[float]:
        recent = self._seen.get(subject, deque())
        while recent and recent[0] <= self._clock() - self._window:
            recent.popleft()
        return recent


class SessionRooms(Protocol):
    async def load(self, room_name: str) -> SessionRef | None: ...


def participant_identity(user_id: UUID) -> str:
    """`user-{id}` plus a random tail, so the same user in two tabs gets two participants.

    LiveKit disconnects an earlier participant when a second one joins with the same identity.
    """
    return f"user-{user_id}-{uuid.uuid4().hex[:8]}"


def test_grants(room_name: str) -> dict[str, Any]:
    """Join this one room, hear everyone, speak through the microphone, send data; nothing more.

    Named as LiveKit's `VideoGrants` are in a token (livekit-api's AccessToken writes the same).
    """
    return {
        "roomJoin": True,
        "room": room_name,
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "canPublishSources": [MICROPHONE_SOURCE],
    }


def room_configuration(
    settings: TokenServiceSettings,
    *,
    agent_id: UUID,
    session_id: UUID,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """What LiveKit applies when the browser's join creates the room: the agent dispatch included.

    LiveKit's `RoomConfiguration` as a token carries it. The dispatch metadata carries the request's
    correlation id, so the worker's logs of the call share an id with the HTTP request and the
    `session.requested` event that started it.
    """
    fields = {"agent_id": str(agent_id), "session_id": str(session_id)}
    if correlation_id:
        fields["correlation_id"] = correlation_id
    return {
        "emptyTimeout": settings.room_empty_timeout_seconds,
        "agents": [{"agentName": settings.agent_name, "metadata": json.dumps(fields)}],
    }


def _base64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_JWT_HEADER = _base64url(b'{"alg":"HS256","typ":"JWT"}')


def sign_token(claims: dict[str, Any], secret: str) -> str:
    """An HS256 JWT of `claims`, as LiveKit verifies it.

    Signed here rather than through livekit-api's AccessToken: its deep dataclass copy, protobuf
    conversion and PyJWT's key preparation cost about 0.25 ms per token, several times this.
    """
    signing_input = f"{_JWT_HEADER}.{_base64url(json.dumps(claims, separators=(',', ':')).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_base64url(signature)}"


def require_livekit(settings: TokenServiceSettings) -> tuple[str, str]:
    """The LiveKit API key and secret, or LiveKitNotConfigured naming what to set."""
    key = settings.livekit_api_key.get_secret_value() if settings.livekit_api_key else ""
    secret = settings.livekit_api_secret.get_secret_value() if settings.livekit_api_secret else ""
    if not (settings.livekit_configured and key and secret):
        raise LiveKitNotConfigured(
            "LiveKit is not configured on the token-service: set LIVEKIT_URL, LIVEKIT_API_KEY "
            "and LIVEKIT_API_SECRET"
        )
    return key, secret


def generate_test_token(
    settings: TokenServiceSettings,
    *,
    agent_id: UUID,
    session_id: UUID,
    user_id: UUID,
    user_name: str,
    ttl: timedelta | None = None,
    correlation_id: str | None = None,
) -> TestToken:
    """Mint a token for a fresh test room of `agent_id`; raises LiveKitNotConfigured without LiveKit."""
    api_key, api_secret = require_livekit(settings)
    room = new_test_room(agent_id)
    identity = participant_identity(user_id)
    issued_at = int(time.time())
    lifetime = ttl if ttl is not None else timedelta(seconds=settings.token_ttl_seconds)
    expires_at = issued_at + int(lifetime.total_seconds())
    claims = {
        "name": user_name,
        "video": test_grants(room.name),
        "roomConfig": room_configuration(
            settings, agent_id=agent_id, session_id=session_id, correlation_id=correlation_id
        ),
        "sub": identity,
        "iss": api_key,
        "nbf": issued_at,
        "exp": expires_at,
    }
    return TestToken(
        token=sign_token(claims, api_secret),
        server_url=settings.browser_livekit_url,
        room_name=room.name,
        identity=identity,
        expires_at=datetime.fromtimestamp(expires_at, UTC),
    )


def authorize_test_call(user: UserClaims, agent: AgentConfig) -> None:
    """Any member of the agent's organisation may test it, if the agent is active."""
    if user.role_in(agent.org_id) is None:
        raise NotAMember(
            f"you are not a member of the organisation that owns agent {agent.id}; "
            "ask one of its owners or admins to add you"
        )
    if not agent.active:
        raise AgentInactive(f"agent {agent.id} is inactive; activate it before testing it")


def session_requested_event(
    token: TestToken, *, agent: AgentConfig, user_id: UUID, session_id: UUID
) -> SessionRequested:
    return SessionRequested(
        org_id=agent.org_id,
        agent_id=agent.id,
        session_id=session_id,
        data=SessionRequestedData(
            kind="test",
            room_name=token.room_name,
            requested_by=user_id,
            expires_at=token.expires_at,
        ),
    )


async def issue_test_token(
    settings: TokenServiceSettings,
    *,
    user: UserClaims,
    agent_id: UUID,
    agents: AgentDirectory,
    admission: CallAdmission,
    publisher: EventPublisher,
    missing: MissingAgentRequests,
) -> TestToken:
    """Check, mint, record and announce a test call; the token leaves only after the broker's confirm.

    The call is counted against the user's limit once it is known to be allowed (the agent exists, is
    active and the user is a member), in the same Redis step that records its room, so a token costs
    one Redis round trip (docs/decisions.md). Requests for agents that do not exist have a limit of
    their own (`MissingAgentRequests`).
    """
    require_livekit(settings)
    subject = f"user:{user.user_id}"
    if wait := missing.retry_after(subject):
        raise RateLimited(
            f"too many test calls for agents that do not exist: at most {settings.rate_limit_requests} "
            f"every {settings.rate_limit_window_seconds} s; try again in {wait} s",
            retry_after_seconds=wait,
        )
    try:
        agent = await _look_up(agents, agent_id, bound=settings.dependency_timeout_seconds)
    except AgentNotFound:
        missing.record(subject)
        raise
    authorize_test_call(user, agent)
    session_id = uuid.uuid4()
    token = generate_test_token(
        settings,
        agent_id=agent.id,
        session_id=session_id,
        user_id=user.user_id,
        user_name=user.email,
        correlation_id=current_correlation_id(),
    )
    ref = SessionRef(session_id=session_id, agent_id=agent.id, org_id=agent.org_id)
    decision = await admission.admit(
        subject, room_name=token.room_name, ref=ref, user=user.user_id, token_issued_at=user.iat
    )
    if not decision.allowed:
        raise RateLimited(
            f"too many test calls: at most {settings.rate_limit_requests} every "
            f"{settings.rate_limit_window_seconds} s; try again in {decision.retry_after_seconds} s",
            retry_after_seconds=decision.retry_after_seconds,
        )
    event = session_requested_event(token, agent=agent, user_id=user.user_id, session_id=session_id)
    await _announce(publisher, event, timeout=settings.dependency_timeout_seconds)
    log.info(
        "token.issued",
        agent_id=str(agent.id),
        org_id=str(agent.org_id),
        session_id=str(session_id),
        room=token.room_name,
        user_id=str(user.user_id),
    )
    return token


async def _announce(publisher: EventPublisher, event: SessionRequested, *, timeout: float) -> None:
    try:
        await publisher.publish(event, timeout=timeout)
    except PublishError as error:
        log.warning("token.session_not_confirmed", agent_id=str(event.agent_id), error=str(error))
        raise DependencyUnavailable(
            "the message broker did not confirm the new session, so no token was issued; "
            "try again in a few seconds"
        ) from error


async def _look_up(agents: AgentDirectory, agent_id: UUID, *, bound: float) -> AgentConfig:
    # The registry client bounds its own RPC wait; this also bounds its cache read and reply-queue
    # set-up, which could otherwise wait on a broker that is reconnecting.
    try:
        async with asyncio.timeout(bound + 0.5):
            return await agents.get_agent(agent_id)
    except TimeoutError as error:
        raise DependencyUnavailable(
            "neither the agent registry nor its cache answered in time; try again in a few seconds"
        ) from error


def session_ended_event(webhook_id: str, *, ref: SessionRef, room_name: str) -> SessionEnded:
    """`session.ended` for a room LiveKit closed; the same webhook always yields the same event id,
    so a webhook LiveKit delivers twice is processed once downstream."""
    return SessionEnded(
        id=uuid.uuid5(SESSION_NAMESPACE, f"livekit-webhook:{webhook_id or room_name}"),
        org_id=ref.org_id,
        agent_id=ref.agent_id,
        session_id=ref.session_id,
        data=SessionEndedData(
            reason="room_finished",
            detail="LiveKit closed the room",
            room_name=room_name,
        ),
    )


async def handle_livekit_event(
    webhook: livekit_api.WebhookEvent,
    *,
    rooms: SessionRooms,
    publisher: EventPublisher,
    timeout: float,
) -> SessionEnded | None:
    """Close the session of a test room LiveKit finished, even if its worker died without saying so."""
    if webhook.event != ROOM_FINISHED:
        return None
    room_name = webhook.room.name
    try:
        room = parse_room_name(room_name)
    except InvalidRoomName:
        log.info("webhook.room_ignored", room=room_name[:128])
        return None
    if not isinstance(room, TestRoom):
        return None
    ref = await rooms.load(room_name)
    if ref is None:
        log.warning("webhook.session_unknown", room=room_name)
        return None
    event = session_ended_event(webhook.id, ref=ref, room_name=room_name)
    try:
        await publisher.publish(event, timeout=timeout)
    except PublishError as error:
        raise DependencyUnavailable(
            "the message broker did not confirm session.ended; LiveKit should retry"
        ) from error
    log.info("webhook.session_ended", room=room_name, session_id=str(ref.session_id))
    return event
