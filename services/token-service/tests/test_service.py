"""The token-service's decisions, without I/O: the token's exact contents, who may test, event shapes."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from agentline_common.agents import AgentConfig
from agentline_common.auth import Role, UserClaims
from agentline_common.bus import PublishError
from agentline_common.events import Event
from agentline_common.rate_limits import RateDecision
from agentline_common.registry_client import AgentNotFound
from agentline_common.rooms import TestRoom, parse_room_name
from agentline_token_service.service import (
    AgentInactive,
    DependencyUnavailable,
    MemberRemoved,
    MissingAgentRequests,
    NotAMember,
    RateLimited,
    SessionRef,
    TestToken,
    authorize_test_call,
    generate_test_token,
    handle_livekit_event,
    issue_test_token,
    session_ended_event,
)
from agentline_token_service.settings import TokenServiceSettings
from livekit import api as livekit_api

pytestmark = pytest.mark.unit

API_KEY = "APIunit" + secrets.token_hex(4)
API_SECRET = secrets.token_urlsafe(48)


def settings(**overrides: object) -> TokenServiceSettings:
    values: dict[str, object] = {
        "livekit_url": "ws://127.0.0.1:7880",
        "livekit_public_url": "wss://media.example.test",
        "livekit_api_key": API_KEY,
        "livekit_api_secret": API_SECRET,
    }
    values.update(overrides)
    return TokenServiceSettings(**values)  # type: ignore[arg-type]


def user(*orgs: uuid.UUID, role: Role = Role.MEMBER) -> UserClaims:
    now = int(datetime.now(UTC).timestamp())
    return UserClaims(
        sub=uuid.uuid4(),
        email="ada@example.test",
        orgs=dict.fromkeys(orgs, role),
        exp=now + 900,
        iat=now,
        jti=uuid.uuid4().hex,
    )


def agent(*, org_id: uuid.UUID | None = None, active: bool = True) -> AgentConfig:
    return AgentConfig(
        id=uuid.uuid4(),
        org_id=org_id or uuid.uuid4(),
        name="Receptionist",
        active=active,
        instructions="Be brief.",
        first_message="Hello!",
    )


def test_token_decodes_to_exactly_the_test_grants() -> None:
    agent_id, session_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    minted = generate_test_token(
        settings(), agent_id=agent_id, session_id=session_id, user_id=user_id, user_name="ada@x.test"
    )

    claims = livekit_api.TokenVerifier(API_KEY, API_SECRET).verify(minted.token)

    assert claims.identity == minted.identity
    assert claims.identity.startswith(f"user-{user_id}-")
    assert claims.name == "ada@x.test"
    assert claims.video == livekit_api.VideoGrants(
        room_join=True,
        room=minted.room_name,
        can_subscribe=True,
        can_publish=True,
        can_publish_sources=["microphone"],
        can_publish_data=True,
    )
    assert claims.room_config is not None
    assert claims.room_config.empty_timeout == 300
    [dispatch] = claims.room_config.agents
    assert dispatch.agent_name == "agentline-agent"
    assert json.loads(dispatch.metadata) == {"agent_id": str(agent_id), "session_id": str(session_id)}
    room = parse_room_name(minted.room_name)
    assert isinstance(room, TestRoom) and room.agent_id == agent_id
    assert minted.server_url == "wss://media.example.test"


def test_token_carries_nothing_administrative() -> None:
    minted = generate_test_token(
        settings(),
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        user_name="ada@x.test",
    )

    raw = jwt.decode(minted.token, API_SECRET, algorithms=["HS256"], issuer=API_KEY)

    assert set(raw) == {"sub", "iss", "nbf", "exp", "name", "video", "roomConfig"}
    assert set(raw["video"]) == {
        "roomJoin",
        "room",
        "canSubscribe",
        "canPublish",
        "canPublishSources",
        "canPublishData",
    }
    assert raw["exp"] - raw["nbf"] == 600
    assert datetime.fromtimestamp(raw["exp"], UTC) == minted.expires_at


def test_token_names_the_configured_worker_and_lifetime() -> None:
    minted = generate_test_token(
        settings(agent_name="support-bot", token_ttl_seconds=120, room_empty_timeout_seconds=45),
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        user_name="ada@x.test",
    )

    claims = livekit_api.TokenVerifier(API_KEY, API_SECRET).verify(minted.token)
    raw = jwt.decode(minted.token, options={"verify_signature": False})

    assert claims.room_config is not None
    assert claims.room_config.agents[0].agent_name == "support-bot"
    assert claims.room_config.empty_timeout == 45
    assert raw["exp"] - raw["nbf"] == 120


def test_two_tokens_for_one_user_get_two_rooms_and_identities() -> None:
    user_id, agent_id = uuid.uuid4(), uuid.uuid4()
    first, second = (
        generate_test_token(
            settings(),
            agent_id=agent_id,
            session_id=uuid.uuid4(),
            user_id=user_id,
            user_name="ada@x.test",
        )
        for _ in range(2)
    )

    assert first.room_name != second.room_name
    assert first.identity != second.identity


def test_any_role_of_the_agents_organisation_may_test() -> None:
    tested = agent()
    for role in Role:
        authorize_test_call(user(tested.org_id, role=role), tested)


def test_a_member_of_another_organisation_may_not_test() -> None:
    with pytest.raises(NotAMember, match="not a member"):
        authorize_test_call(user(uuid.uuid4(), role=Role.OWNER), agent())


def test_an_inactive_agent_is_refused_to_members_only() -> None:
    inactive = agent(active=False)
    with pytest.raises(AgentInactive, match="activate it"):
        authorize_test_call(user(inactive.org_id), inactive)
    with pytest.raises(NotAMember):
        authorize_test_call(user(uuid.uuid4()), inactive)


class FakeAgents:
    def __init__(self, *agents: AgentConfig) -> None:
        self._agents = {found.id: found for found in agents}
        self.asked = 0

    async def get_agent(self, agent_id: uuid.UUID) -> AgentConfig:
        self.asked += 1
        if agent_id not in self._agents:
            raise AgentNotFound(f"no agent with id {agent_id}")
        return self._agents[agent_id]


def no_missing_yet() -> MissingAgentRequests:
    return MissingAgentRequests(limit=10, window_seconds=60)


class FakePublisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[Event] = []

    async def publish(self, event: Event, *, timeout: float = 5.0) -> None:
        if self.fail:
            raise PublishError("nacked")
        self.published.append(event)


class FakeAdmission:
    """Admits or refuses every call as told; records the rooms of admitted calls."""

    def __init__(self, decision: RateDecision, *, removed: bool = False) -> None:
        self.decision = decision
        self.removed = removed
        self.saved: dict[str, SessionRef] = {}

    async def admit(
        self, subject: str, *, room_name: str, ref: SessionRef, user: uuid.UUID, token_issued_at: int
    ) -> RateDecision:
        if self.removed:
            raise MemberRemoved("you were removed from the organisation")
        if self.decision.allowed:
            self.saved[room_name] = ref
        return self.decision

    async def load(self, room_name: str) -> SessionRef | None:
        return self.saved.get(room_name)


async def issue_for(
    tested: AgentConfig,
    *,
    admission: FakeAdmission,
    publisher: FakePublisher,
    requester: UserClaims | None = None,
    config: TokenServiceSettings | None = None,
) -> TestToken:
    """A test token of `tested` for a member of its organisation (`requester`, else a new one)."""
    return await issue_test_token(
        config or settings(),
        user=requester or user(tested.org_id),
        agent_id=tested.id,
        agents=FakeAgents(tested),
        admission=admission,
        publisher=publisher,
        missing=no_missing_yet(),
    )


async def test_issue_announces_the_session_it_hands_out() -> None:
    tested = agent()
    requester = user(tested.org_id)
    publisher, admission = FakePublisher(), FakeAdmission(RateDecision(allowed=True))

    token = await issue_for(tested, admission=admission, publisher=publisher, requester=requester)

    [event] = publisher.published
    assert event.type == "session.requested"
    assert event.data.room_name == token.room_name
    assert admission.saved[token.room_name].session_id == event.session_id
    claims = livekit_api.TokenVerifier(API_KEY, API_SECRET).verify(token.token)
    assert claims.room_config is not None
    metadata = json.loads(claims.room_config.agents[0].metadata)
    assert metadata["session_id"] == str(event.session_id)


async def test_issue_hands_out_nothing_when_the_broker_does_not_confirm() -> None:
    tested = agent()
    with pytest.raises(DependencyUnavailable, match="no token was issued"):
        await issue_for(
            tested, admission=FakeAdmission(RateDecision(allowed=True)), publisher=FakePublisher(fail=True)
        )


async def test_issue_refuses_past_the_rate_limit_with_the_wait() -> None:
    tested = agent()
    admission, publisher = FakeAdmission(RateDecision(allowed=False, retry_after_seconds=17)), FakePublisher()
    with pytest.raises(RateLimited) as refused:
        await issue_for(
            tested,
            admission=admission,
            publisher=publisher,
            config=settings(rate_limit_requests=3, rate_limit_window_seconds=60),
        )
    assert refused.value.retry_after_seconds == 17
    assert publisher.published == [], "a refused call is not announced"
    assert "at most 3 every 60 s" in str(refused.value)


async def test_issue_refuses_a_user_removed_from_the_org_since_their_token_was_issued() -> None:
    tested = agent()
    admission, publisher = FakeAdmission(RateDecision(allowed=True), removed=True), FakePublisher()
    with pytest.raises(NotAMember, match="removed from the organisation"):
        await issue_for(tested, admission=admission, publisher=publisher)
    assert publisher.published == []


async def test_past_the_limit_of_missing_agents_the_user_is_refused_before_any_look_up() -> None:
    tested = agent()
    requester, agents = user(tested.org_id), FakeAgents(tested)
    missing = MissingAgentRequests(limit=2, window_seconds=60)

    async def ask(agent_id: uuid.UUID) -> None:
        await issue_test_token(
            settings(rate_limit_requests=2, rate_limit_window_seconds=60),
            user=requester,
            agent_id=agent_id,
            agents=agents,
            admission=FakeAdmission(RateDecision(allowed=True)),
            publisher=FakePublisher(),
            missing=missing,
        )

    for _ in range(2):
        with pytest.raises(AgentNotFound):
            await ask(uuid.uuid4())
    with pytest.raises(RateLimited, match="agents that do not exist: at most 2 every 60 s") as refused:
        await ask(tested.id)
    assert refused.value.retry_after_seconds == 60
    assert agents.asked == 2, "the refused request cost no look-up"
    await issue_test_token(
        settings(),
        user=user(tested.org_id),
        agent_id=tested.id,
        agents=agents,
        admission=FakeAdmission(RateDecision(allowed=True)),
        publisher=FakePublisher(),
        missing=missing,
    )  # another user is not held back


def test_missing_agent_requests_leave_the_window_and_the_oldest_users_are_forgotten() -> None:
    now = [1000.0]
    missing = MissingAgentRequests(limit=2, window_seconds=10, clock=lambda: now[0], max_users=2)
    missing.record("user:a")
    now[0] += 4
    missing.record("user:a")
    assert missing.retry_after("user:a") == 6
    now[0] += 6.5  # the first request left the window
    assert missing.retry_after("user:a") == 0
    missing.record("user:a")
    assert missing.retry_after("user:a") == 4

    for other in ("user:b", "user:c"):
        missing.record(other)
        missing.record(other)
    assert missing.retry_after("user:c") == 10
    assert missing.retry_after("user:a") == 0, "past max_users the least recent user is forgotten"


def test_the_same_webhook_always_ends_the_session_with_the_same_event_id() -> None:
    ref = SessionRef(session_id=uuid.uuid4(), agent_id=uuid.uuid4(), org_id=uuid.uuid4())
    first = session_ended_event("EV_abc", ref=ref, room_name="r")
    again = session_ended_event("EV_abc", ref=ref, room_name="r")
    other = session_ended_event("EV_def", ref=ref, room_name="r")

    assert first.id == again.id != other.id
    assert first.data.reason == "room_finished"
    assert (first.session_id, first.agent_id, first.org_id) == (
        ref.session_id,
        ref.agent_id,
        ref.org_id,
    )


async def test_only_a_finished_test_room_ends_a_session() -> None:
    agent_id = uuid.uuid4()
    test_room = f"test_{agent_id}_abcdefghijkl"
    rooms = FakeAdmission(RateDecision(allowed=True))
    ref = SessionRef(session_id=uuid.uuid4(), agent_id=agent_id, org_id=agent_id)
    await rooms.admit("user:x", room_name=test_room, ref=ref, user=uuid.uuid4(), token_issued_at=0)
    publisher = FakePublisher()

    for event, room_name in [
        ("participant_left", test_room),
        ("room_finished", "call_+14155550100_23456789ABCD"),
        ("room_finished", "lobby"),
        ("room_finished", f"test_{uuid.uuid4()}_abcdefghijkl"),  # no session known
    ]:
        webhook = livekit_api.WebhookEvent(event=event, room=livekit_api.Room(name=room_name))
        assert await handle_livekit_event(webhook, rooms=rooms, publisher=publisher, timeout=1) is None
    assert publisher.published == []

    finished = livekit_api.WebhookEvent(
        id="EV_1", event="room_finished", room=livekit_api.Room(name=test_room)
    )
    ended = await handle_livekit_event(finished, rooms=rooms, publisher=publisher, timeout=1)
    assert ended is not None and publisher.published == [ended]
    assert ended.agent_id == agent_id


def test_expiry_is_reported_from_the_token() -> None:
    before = datetime.now(UTC)
    minted = generate_test_token(
        settings(),
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        user_name="ada@x.test",
        ttl=timedelta(seconds=2),
    )
    after = datetime.now(UTC)
    raw = jwt.decode(minted.token, options={"verify_signature": False})
    assert datetime.fromtimestamp(raw["exp"], UTC) == minted.expires_at
    assert before.replace(microsecond=0) + timedelta(seconds=2) <= minted.expires_at
    assert minted.expires_at <= after + timedelta(seconds=2)
