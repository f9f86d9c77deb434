"""POST /api/v1/agents/{agent_id}/test-token against the real broker, Redis, registry and LiveKit keys."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from agentline_common.events import SessionRequested
from agentline_common.rooms import TestRoom, parse_room_name
from agentline_common.testing.services import RegistryService, RegistryUser, TokenServiceProcess
from agentline_token_service.service import LiveKitNotConfigured, generate_test_token
from agentline_token_service.settings import TokenServiceSettings
from cryptography.hazmat.primitives.asymmetric import rsa
from livekit import api as livekit_api
from livekit import rtc

pytestmark = pytest.mark.integration

# Generous on purpose: it tells a bounded refusal from a hang, it is not a speed goal.
NO_HANG_SECONDS = 5.0


def path(agent_id: object) -> str:
    return f"/api/v1/agents/{agent_id}/test-token"


@pytest.fixture
def registry(running_registry: RegistryService) -> RegistryService:
    return running_registry


@dataclass(frozen=True)
class Caller:
    """An owner of an organisation with one agent, holding a token that names the organisation."""

    user: RegistryUser
    org_id: uuid.UUID
    agent_id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def add_member(registry: RegistryService, owner: Caller) -> RegistryUser:
    """A new user with the `member` role (the least) in the owner's organisation, logged in."""
    email = f"member-{secrets.token_hex(6)}@example.com"
    password = secrets.token_urlsafe(24)
    body = registry.request(
        "POST",
        f"/orgs/{owner.org_id}/members",
        token=owner.token,
        expect=201,
        json={"email": email, "password": password, "role": "member"},
    )
    return RegistryUser(
        user_id=uuid.UUID(body["user_id"]),
        email=email,
        password=password,
        token=registry.login(email, password),
    )


def new_tester(registry: RegistryService, **agent_fields: Any) -> Caller:
    tenant = registry.new_tenant(**agent_fields)
    # The token from before the organisation existed has no `orgs` entry for it: log in again.
    token = registry.login(tenant.user.email, tenant.user.password)
    return Caller(user=tenant.user, org_id=tenant.org_id, agent_id=tenant.agent_id, token=token)


@pytest.fixture
def service_settings(
    make_settings: Callable[..., TokenServiceSettings],
    registry: RegistryService,
    livekit_values: dict[str, str],
) -> Callable[..., TokenServiceSettings]:
    """Settings on the registry's exchange and keys, with LiveKit configured unless overridden."""

    def factory(**overrides: Any) -> TokenServiceSettings:
        return make_settings(
            bus_exchange=registry.exchange,
            jwks_url=registry.jwks_url,
            **{**livekit_values, **overrides},
        )

    return factory


@pytest.fixture
async def client(
    app_client: Callable[..., Any], service_settings: Callable[..., TokenServiceSettings]
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(service_settings()) as running:
        yield running


async def test_get_test_token_success(
    client: httpx.AsyncClient,
    registry: RegistryService,
    livekit_server: Any,
    events_on: Callable[..., Any],
) -> None:
    tenant = new_tester(registry)
    requested = await events_on(registry.exchange, "session.requested")
    before = datetime.now(UTC)

    response = await client.post(path(tenant.agent_id), headers=tenant.headers)
    after = datetime.now(UTC)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "serverUrl", "roomName", "expiresAt"}
    assert body["serverUrl"] == livekit_server.url
    room = parse_room_name(body["roomName"])
    assert isinstance(room, TestRoom) and room.agent_id == tenant.agent_id
    expires_at = datetime.fromisoformat(body["expiresAt"])
    # Ten minutes from issue; LiveKit tokens count whole seconds.
    assert before + timedelta(seconds=599) <= expires_at <= after + timedelta(seconds=600)

    claims = livekit_api.TokenVerifier(livekit_server.api_key, livekit_server.api_secret).verify(
        body["token"]
    )
    assert claims.video is not None and claims.video.room == body["roomName"]
    assert claims.identity.startswith(f"user-{tenant.user.user_id}-")
    assert claims.name == tenant.user.email
    assert claims.room_config is not None
    metadata = json.loads(claims.room_config.agents[0].metadata)
    assert metadata["agent_id"] == str(tenant.agent_id)
    assert metadata["correlation_id"] == response.headers["x-correlation-id"]

    event = await asyncio.wait_for(requested.get(), 15)
    assert isinstance(event, SessionRequested)
    assert event.session_id == uuid.UUID(metadata["session_id"])
    assert (event.org_id, event.agent_id) == (tenant.org_id, tenant.agent_id)
    assert event.data.kind == "test"
    assert event.data.room_name == body["roomName"]
    assert event.data.requested_by == tenant.user.user_id
    assert event.data.expires_at == expires_at
    session = await asyncio.to_thread(
        registry.wait_for_session, tenant.token, event.session_id, status="requested"
    )
    assert session["room_name"] == body["roomName"]


async def test_get_test_token_agent_not_found(client: httpx.AsyncClient, registry: RegistryService) -> None:
    tenant = new_tester(registry)
    missing = uuid.uuid4()

    response = await client.post(path(missing), headers=tenant.headers)

    assert response.status_code == 404
    assert response.json() == {"detail": f"no agent with id {missing}"}


async def test_get_test_token_permission_denied(
    client: httpx.AsyncClient, registry: RegistryService, events_on: Callable[..., Any]
) -> None:
    owner = new_tester(registry)
    outsider = new_tester(registry)
    requested = await events_on(registry.exchange, "session.requested")

    response = await client.post(path(owner.agent_id), headers=outsider.headers)

    assert response.status_code == 403
    assert "not a member of the organisation" in response.json()["detail"]
    assert "token" not in response.json()
    await asyncio.sleep(0.3)
    assert requested.empty()


async def test_a_member_removed_from_the_org_gets_no_more_test_tokens(
    client: httpx.AsyncClient, registry: RegistryService
) -> None:
    """Their access token still names the organisation, for up to its 15 minutes."""
    owner = new_tester(registry)
    member = add_member(registry, owner)
    member_headers = {"Authorization": f"Bearer {member.token}"}
    assert (await client.post(path(owner.agent_id), headers=member_headers)).status_code == 200

    removal = f"/orgs/{owner.org_id}/members/{member.user_id}"
    await asyncio.to_thread(registry.request, "DELETE", removal, token=owner.token, expect=204)
    refused = await client.post(path(owner.agent_id), headers=member_headers)

    assert refused.status_code == 403
    assert "removed from the organisation" in refused.json()["detail"]
    assert (await client.post(path(owner.agent_id), headers=owner.headers)).status_code == 200


async def test_get_test_token_inactive_agent(client: httpx.AsyncClient, registry: RegistryService) -> None:
    tenant = new_tester(registry, active=False)

    response = await client.post(path(tenant.agent_id), headers=tenant.headers)

    assert response.status_code == 409
    assert response.json()["detail"] == f"agent {tenant.agent_id} is inactive; activate it before testing it"


async def test_get_test_token_livekit_not_configured(
    app_client: Callable[..., Any],
    service_settings: Callable[..., TokenServiceSettings],
    registry: RegistryService,
    events_on: Callable[..., Any],
) -> None:
    tenant = new_tester(registry)
    requested = await events_on(registry.exchange, "session.requested")
    unconfigured = service_settings(livekit_url="", livekit_api_key=None, livekit_api_secret=None)

    async with app_client(unconfigured) as client:
        response = await client.post(path(tenant.agent_id), headers=tenant.headers)

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "LiveKit is not configured" in detail and "LIVEKIT_URL" in detail
    await asyncio.sleep(0.3)
    assert requested.empty()


@pytest.mark.unit
def test_generate_test_token() -> None:
    settings = TokenServiceSettings(
        livekit_url="ws://127.0.0.1:7880",
        livekit_public_url="wss://livekit.example.test",
        livekit_api_key="APIunittest",
        livekit_api_secret="s" * 48,
    )
    agent_id, session_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    minted = generate_test_token(
        settings, agent_id=agent_id, session_id=session_id, user_id=user_id, user_name="ada@x.test"
    )

    claims = livekit_api.TokenVerifier("APIunittest", "s" * 48).verify(minted.token)
    assert minted.server_url == "wss://livekit.example.test"
    assert minted.room_name.startswith(f"test_{agent_id}_")
    assert claims.video == livekit_api.VideoGrants(
        room_join=True,
        room=minted.room_name,
        can_subscribe=True,
        can_publish=True,
        can_publish_sources=["microphone"],
        can_publish_data=True,
    )
    assert claims.room_config is not None and claims.room_config.empty_timeout == 300
    assert json.loads(claims.room_config.agents[0].metadata) == {
        "agent_id": str(agent_id),
        "session_id": str(session_id),
    }
    raw = jwt.decode(minted.token, options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 600


@pytest.mark.unit
@pytest.mark.parametrize(
    "missing",
    [
        {"livekit_url": ""},
        {"livekit_api_key": None},
        {"livekit_api_secret": None},
        {"livekit_api_secret": ""},
    ],
)
def test_generate_test_token_not_configured(missing: dict[str, Any]) -> None:
    values: dict[str, Any] = {
        "livekit_url": "ws://127.0.0.1:7880",
        "livekit_api_key": "APIunittest",
        "livekit_api_secret": "s" * 48,
        **missing,
    }
    with pytest.raises(LiveKitNotConfigured, match="LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"):
        generate_test_token(
            TokenServiceSettings(**values),
            agent_id=uuid.uuid4(),
            session_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            user_name="ada@x.test",
        )


async def test_any_member_of_the_organisation_may_test(
    client: httpx.AsyncClient, registry: RegistryService
) -> None:
    tenant = new_tester(registry)
    member = add_member(registry, tenant)

    response = await client.post(path(tenant.agent_id), headers=member.headers)

    assert response.status_code == 200, response.text


def forged_user_token(registry: RegistryService, user_id: uuid.UUID) -> str:
    """A well-formed user token with the registry's claims, signed by a key the registry never had."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    kid = jwt.get_unverified_header(new_tester(registry).token)["kid"]
    claims = {
        "sub": str(user_id),
        "email": "eve@example.test",
        "orgs": {},
        "iss": "agentline-registry",
        "aud": "agentline",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def test_no_or_bad_credentials_are_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, registry: RegistryService
) -> None:
    tenant = new_tester(registry)
    attempts = {
        "no header": {},
        "not bearer": {"Authorization": f"Basic {tenant.token}"},
        "garbage": {"Authorization": "Bearer not-a-jwt"},
        "forged": {"Authorization": f"Bearer {forged_user_token(registry, tenant.user.user_id)}"},
    }
    for name, headers in attempts.items():
        response = await client.post(path(tenant.agent_id), headers=headers)
        assert response.status_code == 401, name
        assert response.headers["WWW-Authenticate"] == "Bearer", name
        assert "log in" in response.json()["detail"] or "Authorization" in response.json()["detail"]


async def test_a_malformed_agent_id_is_422_naming_the_field(
    client: httpx.AsyncClient, registry: RegistryService
) -> None:
    tenant = new_tester(registry)

    response = await client.post(path("not-a-uuid"), headers=tenant.headers)

    assert response.status_code == 422
    assert response.json()["detail"].startswith("agent_id must be an agent's UUID")
    assert "'not-a-uuid'" in response.json()["detail"]


async def test_past_the_rate_limit_is_429_with_retry_after(
    app_client: Callable[..., Any],
    service_settings: Callable[..., TokenServiceSettings],
    registry: RegistryService,
) -> None:
    tenant = new_tester(registry)
    limited = service_settings(rate_limit_requests=2, rate_limit_window_seconds=60)

    async with app_client(limited) as client:
        statuses = [
            (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code for _ in range(2)
        ]
        refused = await client.post(path(tenant.agent_id), headers=tenant.headers)
        other = add_member(registry, tenant)
        other_user = await client.post(path(tenant.agent_id), headers=other.headers)

    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "at most 2 every 60 s" in refused.json()["detail"]
    assert other_user.status_code == 200, "the limit is per user"


async def test_past_the_limit_for_agents_that_do_not_exist_is_429(
    app_client: Callable[..., Any],
    service_settings: Callable[..., TokenServiceSettings],
    registry: RegistryService,
) -> None:
    """Each unknown agent costs the registry a round trip (nothing caches it): a user asking for
    made-up ids is held back like one asking for too many tokens."""
    tenant = new_tester(registry)
    limited = service_settings(rate_limit_requests=2, rate_limit_window_seconds=60)

    async with app_client(limited) as client:
        statuses = [
            (await client.post(path(uuid.uuid4()), headers=tenant.headers)).status_code for _ in range(2)
        ]
        refused = await client.post(path(tenant.agent_id), headers=tenant.headers)
        other = add_member(registry, tenant)
        other_user = await client.post(path(tenant.agent_id), headers=other.headers)

    assert statuses == [404, 404]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "agents that do not exist: at most 2 every 60 s" in refused.json()["detail"]
    assert other_user.status_code == 200, "the limit is per user"


async def test_a_deactivated_agent_is_refused_at_once(
    client: httpx.AsyncClient, registry: RegistryService
) -> None:
    tenant = new_tester(registry)
    assert (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code == 200

    await asyncio.to_thread(registry.set_active, tenant.token, tenant.agent_id, False)

    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status = (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code
    assert status == 409


async def test_broker_stopped_is_503_and_no_token(
    client: httpx.AsyncClient,
    registry: RegistryService,
    rabbitmq: Any,
) -> None:
    tenant = new_tester(registry)
    # The agent is now in the Redis cache, so the refusal below comes from the unconfirmed publish.
    assert (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code == 200

    await asyncio.to_thread(rabbitmq.stop)
    try:
        started = time.monotonic()
        response = await client.post(path(tenant.agent_id), headers=tenant.headers)
        elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(rabbitmq.start)

    assert response.status_code == 503
    assert set(response.json()) == {"detail"}
    assert "broker" in response.json()["detail"]
    assert elapsed < NO_HANG_SECONDS

    # Once the broker is back, tokens flow again without restarting anything.
    deadline = time.monotonic() + 60
    status = 503
    while status != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        status = (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code
    assert status == 200


async def test_started_without_the_broker_it_answers_503_and_connects_once_the_broker_is_back(
    app_client: Callable[..., Any],
    service_settings: Callable[..., TokenServiceSettings],
    registry: RegistryService,
    rabbitmq: Any,
) -> None:
    tenant = new_tester(registry)
    await asyncio.to_thread(rabbitmq.stop)
    try:
        async with app_client(service_settings(broker_startup_wait_seconds=0)) as client:
            alive = await client.get("/healthz")
            ready = await client.get("/readyz")
            refused = await client.post(path(tenant.agent_id), headers=tenant.headers)
            await asyncio.to_thread(rabbitmq.start)
            deadline = time.monotonic() + 60
            status = 503
            while status != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                status = (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code
            ready_after = await client.get("/readyz")
    finally:
        await asyncio.to_thread(rabbitmq.start)

    assert alive.status_code == 200
    assert ready.status_code == 503 and "broker" in ready.json()["detail"]
    assert refused.status_code == 503 and "try again" in refused.json()["detail"]
    assert status == 200
    assert ready_after.status_code == 200


async def test_registry_stopped_is_503_within_the_bound(
    client: httpx.AsyncClient, registry: RegistryService
) -> None:
    tenant = new_tester(registry)
    # Fetch the registry's signing keys first: with the registry down we want the look-up to fail.
    warm = await client.post(path(uuid.uuid4()), headers=tenant.headers)
    assert warm.status_code == 404

    await asyncio.to_thread(registry.stop)
    try:
        started = time.monotonic()
        response = await client.post(path(tenant.agent_id), headers=tenant.headers)
        elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(registry.start)

    assert response.status_code == 503
    assert "registry could not be reached" in response.json()["detail"]
    assert elapsed < NO_HANG_SECONDS


async def test_probes_and_metrics(client: httpx.AsyncClient, registry: RegistryService) -> None:
    tenant = new_tester(registry)
    assert (await client.post(path(tenant.agent_id), headers=tenant.headers)).status_code == 200
    assert (await client.post(path(tenant.agent_id))).status_code == 401

    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    metrics = (await client.get("/metrics")).text
    assert "agentline_tokens_issued_total 1.0" in metrics
    assert 'agentline_bus_publishes_total{result="confirmed"} 1.0' in metrics
    assert 'agentline_agent_lookups_total{result="miss"} 1.0' in metrics
    assert (
        'agentline_http_request_duration_seconds_count{method="POST",'
        'route="/api/v1/agents/{agent_id}/test-token",status="200"} 1.0'
    ) in metrics


async def test_the_served_token_service_hands_out_tokens_that_join(
    token_service: TokenServiceProcess, registry: RegistryService
) -> None:
    """The console script, as other services' tests and `make up` run it, end to end."""
    caller = new_tester(registry)

    body = await asyncio.to_thread(token_service.test_token, caller.token, caller.agent_id)
    refused = await asyncio.to_thread(token_service.test_token, caller.token, uuid.uuid4(), expect=404)

    room = rtc.Room()
    await room.connect(body["serverUrl"], body["token"], rtc.RoomOptions(auto_subscribe=False))
    try:
        assert room.name == body["roomName"]
    finally:
        await room.disconnect()
    assert refused["detail"].startswith("no agent with id")
