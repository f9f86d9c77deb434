"""The HTTP API against the real app (lifespan run: real broker, Redis, SQLite)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from agentline_common.auth import JwksVerifier, Role
from agentline_common.bus import Bus
from agentline_common.events import SessionEnded, SessionEndedData
from agentline_common.testing.services import RegistryService
from agentline_registry import service
from agentline_registry.credentials import SigningKey, issue_access_token
from agentline_registry.runtime import Runtime
from agentline_registry.tables import OUTBOX
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select
from sqlmodel import SQLModel

from .conftest import RunningApp

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
GUESSERS = 32
"""Concurrent bad log-ins kept in flight against the registry process."""
LOOKUPS = 10
TOOL = {"name": "t", "description": "d", "url": "http://h/x"}


@dataclass
class Person:
    user_id: uuid.UUID
    email: str
    headers: dict[str, str]


async def _person(app: RunningApp) -> Person:
    email = f"user-{secrets.token_hex(6)}@example.test"
    async with app.runtime.sessions() as session:
        user = await service.create_user(session, email=email, password=PASSWORD)
        await session.commit()
    response = await app.client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    return Person(user_id=user.id, email=email, headers={"Authorization": f"Bearer {token}"})


def _nested_schema(levels: int) -> dict[str, Any]:
    """An object schema whose properties nest `levels` objects deep (a 4 KB body at 100)."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


def _number() -> str:
    return f"+1555{secrets.randbelow(10**7):07d}"


@dataclass
class World:
    """Org A (owner, admin, member, an agent with a number and a logged call) and an outsider."""

    app: RunningApp
    owner: Person
    member: Person
    outsider: Person
    org_id: uuid.UUID
    agent_id: uuid.UUID
    number: str
    session_id: uuid.UUID


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(registry: RunningApp) -> World:
    client = registry.client
    owner, outsider = await _person(registry), await _person(registry)
    org = await client.post("/api/v1/orgs", json={"name": "Org A"}, headers=owner.headers)
    assert org.status_code == 201, org.text
    org_id = uuid.UUID(org.json()["id"])
    await client.post("/api/v1/orgs", json={"name": "Org B"}, headers=outsider.headers)
    member = await _person(registry)
    added = await client.post(
        f"/api/v1/orgs/{org_id}/members",
        json={"email": member.email, "role": "member"},
        headers=owner.headers,
    )
    assert added.status_code == 201, added.text
    agent = await client.post(
        f"/api/v1/orgs/{org_id}/agents",
        json={"name": "Ana", "instructions": "Help", "first_message": "Hi"},
        headers=owner.headers,
    )
    assert agent.status_code == 201, agent.text
    agent_id = uuid.UUID(agent.json()["id"])
    number = _number()
    assigned = await client.post(
        f"/api/v1/agents/{agent_id}/phone-numbers", json={"number": number}, headers=owner.headers
    )
    assert assigned.status_code == 201, assigned.text
    session_id = uuid.uuid4()
    async with registry.runtime.sessions() as session:
        await service.record_session_events(
            session,
            [
                SessionEnded(
                    session_id=session_id,
                    agent_id=agent_id,
                    org_id=org_id,
                    data=SessionEndedData(reason="completed", detail="the caller said goodbye"),
                )
            ],
        )
        await session.commit()
    return World(registry, owner, member, outsider, org_id, agent_id, number, session_id)


def _org_scoped_calls(w: World) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(method, route template, concrete path, body) for every route that touches org A's data."""
    org, agent, number = w.org_id, w.agent_id, w.number.replace("+", "%2B")
    return [
        ("GET", "/api/v1/orgs/{org_id}", f"/api/v1/orgs/{org}", None),
        ("GET", "/api/v1/orgs/{org_id}/members", f"/api/v1/orgs/{org}/members", None),
        (
            "POST",
            "/api/v1/orgs/{org_id}/members",
            f"/api/v1/orgs/{org}/members",
            {"email": w.outsider.email, "role": "owner"},
        ),
        (
            "DELETE",
            "/api/v1/orgs/{org_id}/members/{user_id}",
            f"/api/v1/orgs/{org}/members/{w.owner.user_id}",
            None,
        ),
        ("GET", "/api/v1/orgs/{org_id}/agents", f"/api/v1/orgs/{org}/agents", None),
        ("POST", "/api/v1/orgs/{org_id}/agents", f"/api/v1/orgs/{org}/agents", {"name": "x"}),
        ("GET", "/api/v1/agents/{agent_id}", f"/api/v1/agents/{agent}", None),
        ("PATCH", "/api/v1/agents/{agent_id}", f"/api/v1/agents/{agent}", {"name": "taken over"}),
        ("DELETE", "/api/v1/agents/{agent_id}", f"/api/v1/agents/{agent}", None),
        ("POST", "/api/v1/agents/{agent_id}/activate", f"/api/v1/agents/{agent}/activate", None),
        ("POST", "/api/v1/agents/{agent_id}/deactivate", f"/api/v1/agents/{agent}/deactivate", None),
        ("GET", "/api/v1/orgs/{org_id}/phone-numbers", f"/api/v1/orgs/{org}/phone-numbers", None),
        (
            "POST",
            "/api/v1/agents/{agent_id}/phone-numbers",
            f"/api/v1/agents/{agent}/phone-numbers",
            {"number": _number()},
        ),
        (
            "DELETE",
            "/api/v1/agents/{agent_id}/phone-numbers/{number}",
            f"/api/v1/agents/{agent}/phone-numbers/{number}",
            None,
        ),
        ("GET", "/api/v1/agents/{agent_id}/sessions", f"/api/v1/agents/{agent}/sessions", None),
        ("GET", "/api/v1/sessions/{session_id}", f"/api/v1/sessions/{w.session_id}", None),
    ]


# Routes with no organisation in them: each answers only about the caller's own data.
UNSCOPED_ROUTES = {
    ("POST", "/api/v1/auth/login"),
    ("GET", "/api/v1/auth/me"),
    ("GET", "/api/v1/.well-known/jwks.json"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/api/v1/orgs"),
    ("POST", "/api/v1/orgs"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
}
MANAGING = {"POST", "PATCH", "DELETE"}


async def _snapshot(runtime: Runtime) -> dict[str, list[str]]:
    """Every row of every table, to prove a refused request changed nothing."""
    snapshot: dict[str, list[str]] = {}
    async with runtime.engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            # The relay marks outbox rows sent in the background; which rows exist is what counts.
            columns = [table.c.id, table.c.event_type] if table is OUTBOX else [table]
            rows = await connection.execute(select(*columns))
            snapshot[table.name] = sorted(str(tuple(row)) for row in rows)
    return snapshot


def _routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every route the app serves, read from its OpenAPI schema (all of them are documented)."""
    return {
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    }


async def test_the_table_below_covers_every_route(world: World, registry: RunningApp) -> None:
    covered = {(method, template) for method, template, _, _ in _org_scoped_calls(world)}
    assert _routes(registry.app) == covered | UNSCOPED_ROUTES


async def test_another_orgs_user_can_neither_read_nor_change_anything(world: World) -> None:
    client = world.app.client
    before = await _snapshot(world.app.runtime)
    for method, template, path, body in _org_scoped_calls(world):
        response = await client.request(method, path, json=body, headers=world.outsider.headers)
        assert response.status_code in (403, 404), f"{method} {template}: {response.status_code}"
        assert world.number not in response.text and "Ana" not in response.text
    assert await _snapshot(world.app.runtime) == before

    orgs = await client.get("/api/v1/orgs", headers=world.outsider.headers)
    assert [org["name"] for org in orgs.json()] == ["Org B"]
    me = await client.get("/api/v1/auth/me", headers=world.outsider.headers)
    assert [m["org_name"] for m in me.json()["memberships"]] == ["Org B"]


async def test_a_member_reads_but_does_not_manage(world: World) -> None:
    client = world.app.client
    before = await _snapshot(world.app.runtime)
    for method, template, path, body in _org_scoped_calls(world):
        response = await client.request(method, path, json=body, headers=world.member.headers)
        if method in MANAGING or template.endswith(("/activate", "/deactivate")):
            assert response.status_code == 403, f"{method} {template}: {response.status_code}"
        else:
            assert response.status_code == 200, f"{method} {template}: {response.text}"
    assert await _snapshot(world.app.runtime) == before


async def test_without_a_valid_token_every_scoped_route_is_401(world: World) -> None:
    client = world.app.client
    foreign = issue_access_token(
        SigningKey.generate(),
        user_id=world.owner.user_id,
        email=world.owner.email,
        orgs={world.org_id: Role.OWNER},
        issuer="agentline-registry",
        audience="agentline",
        lifetime=timedelta(minutes=5),
    )
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {foreign.token}"}):
        for method, template, path, body in _org_scoped_calls(world):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, f"{method} {template} {headers}: {response.status_code}"


async def test_login_token_verifies_against_the_published_jwks(world: World) -> None:
    client = world.app.client
    response = await client.post(
        "/api/v1/auth/login", json={"email": world.owner.email.upper(), "password": PASSWORD}
    )
    token = response.json()["access_token"]
    for path in ("/.well-known/jwks.json", "/api/v1/.well-known/jwks.json"):
        verifier = JwksVerifier(
            jwks_url=f"http://registry.test{path}",
            issuer="agentline-registry",
            audience="agentline",
            http=client,
        )
        claims = await verifier.verify(token)
        assert claims.user_id == world.owner.user_id
        assert claims.role_in(world.org_id) == Role.OWNER
        assert claims.exp - claims.iat == 15 * 60


async def test_wrong_password_and_unknown_email_look_the_same(world: World) -> None:
    client = world.app.client
    wrong = await client.post("/api/v1/auth/login", json={"email": world.owner.email, "password": "nope"})
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.test", "password": "nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_failed_logins_past_the_limit_are_429_with_retry_after(world: World) -> None:
    client, settings = world.app.client, world.app.runtime.settings
    target, bystander = await _person(world.app), await _person(world.app)
    for _ in range(settings.login_failures_per_email):
        wrong = await client.post(
            "/api/v1/auth/login", json={"email": target.email.upper(), "password": "wrong password"}
        )
        assert wrong.status_code == 401, wrong.text

    refused = await client.post("/api/v1/auth/login", json={"email": target.email, "password": PASSWORD})

    assert refused.status_code == 429, refused.text
    assert "too many failed log-ins" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= settings.login_failure_window_seconds
    other = await client.post("/api/v1/auth/login", json={"email": bystander.email, "password": PASSWORD})
    assert other.status_code == 200, other.text


async def test_successful_logins_do_not_count_toward_the_limit(world: World) -> None:
    client, settings = world.app.client, world.app.runtime.settings
    person = await _person(world.app)
    for _ in range(settings.login_failures_per_email + 1):
        response = await client.post("/api/v1/auth/login", json={"email": person.email, "password": PASSWORD})
        assert response.status_code == 200, response.text


async def test_look_ups_answer_while_bad_logins_are_in_flight(
    running_registry: RegistryService, registry_bus: Bus
) -> None:
    """Password hashing (about 0.2 s of CPU each) must not hold up the look-ups calls depend on."""
    tenant = await asyncio.to_thread(running_registry.new_tenant)
    answered = 0
    enough_in_flight = asyncio.Event()

    async def keep_guessing(client: httpx.AsyncClient) -> None:
        nonlocal answered
        while True:
            email = f"nobody-{secrets.token_hex(6)}@example.test"  # a new email each: under its limit
            response = await client.post("/auth/login", json={"email": email, "password": "guess"})
            assert response.status_code == 401, response.text
            answered += 1
            if answered >= GUESSERS:
                enough_in_flight.set()

    async with httpx.AsyncClient(base_url=running_registry.api_url, timeout=60) as client:
        guessers = [asyncio.create_task(keep_guessing(client)) for _ in range(GUESSERS)]
        try:
            await asyncio.wait_for(enough_in_flight.wait(), 60)
            # One after another, each within the bound every look-up caller (token-service, gateway,
            # worker) waits: a loop busy hashing passwords misses some of them.
            answers = [
                await registry_bus.request("agent.get", {"id": str(tenant.agent_id)}) for _ in range(LOOKUPS)
            ]
        finally:
            for guesser in guessers:
                guesser.cancel()
            ended = await asyncio.gather(*guessers, return_exceptions=True)

    assert {answer["id"] for answer in answers} == {str(tenant.agent_id)}
    failed = [end for end in ended if isinstance(end, Exception)]  # a cancelled guesser is no failure
    assert not failed, f"a bad log-in was not answered 401: {failed[0]!r}"


async def test_agent_lifecycle_and_pagination(world: World) -> None:
    client, headers = world.app.client, world.owner.headers
    org = (await client.post("/api/v1/orgs", json={"name": "paging"}, headers=headers)).json()["id"]
    created = []
    for index in range(3):
        response = await client.post(
            f"/api/v1/orgs/{org}/agents", json={"name": f"page {index}"}, headers=headers
        )
        created.append(response.json()["id"])
    page = await client.get(f"/api/v1/orgs/{org}/agents?limit=2&offset=1", headers=headers)
    body = page.json()
    assert (body["total"], body["limit"], body["offset"]) == (3, 2, 1)
    assert [agent["name"] for agent in body["items"]] == ["page 1", "page 2"]

    agent_id = created[0]
    patched = await client.patch(
        f"/api/v1/agents/{agent_id}", json={"voice": "verse", "temperature": 1.1}, headers=headers
    )
    assert (patched.json()["voice"], patched.json()["temperature"]) == ("verse", 1.1)
    off = await client.post(f"/api/v1/agents/{agent_id}/deactivate", headers=headers)
    assert off.json()["active"] is False
    on = await client.post(f"/api/v1/agents/{agent_id}/activate", headers=headers)
    assert on.json()["active"] is True
    assert (await client.delete(f"/api/v1/agents/{agent_id}", headers=headers)).status_code == 204
    assert (await client.get(f"/api/v1/agents/{agent_id}", headers=headers)).status_code == 404


async def test_numbers_assign_release_and_conflict(world: World) -> None:
    client, headers = world.app.client, world.owner.headers
    other = await client.post(f"/api/v1/orgs/{world.org_id}/agents", json={"name": "other"}, headers=headers)
    other_id = other.json()["id"]
    taken = await client.post(
        f"/api/v1/agents/{other_id}/phone-numbers", json={"number": world.number}, headers=headers
    )
    assert taken.status_code == 409
    assert world.number in taken.json()["detail"] and str(world.agent_id) in taken.json()["detail"]

    outsider_org = (await client.get("/api/v1/orgs", headers=world.outsider.headers)).json()[0]["id"]
    foreign_agent = await client.post(
        f"/api/v1/orgs/{outsider_org}/agents", json={"name": "b"}, headers=world.outsider.headers
    )
    elsewhere = await client.post(
        f"/api/v1/agents/{foreign_agent.json()['id']}/phone-numbers",
        json={"number": world.number},
        headers=world.outsider.headers,
    )
    assert elsewhere.status_code == 409
    assert "already taken" in elsewhere.json()["detail"]
    assert str(world.agent_id) not in elsewhere.json()["detail"]

    number = _number()
    path = f"/api/v1/agents/{other_id}/phone-numbers"
    assert (await client.post(path, json={"number": number}, headers=headers)).status_code == 201
    listed = await client.get(f"/api/v1/orgs/{world.org_id}/phone-numbers", headers=headers)
    assert number in [row["number"] for row in listed.json()]
    encoded = number.replace("+", "%2B")
    assert (await client.delete(f"{path}/{encoded}", headers=headers)).status_code == 204
    assert (await client.delete(f"{path}/{encoded}", headers=headers)).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/api/v1/agents/not-a-uuid", None, "agent_id"),
        ("GET", "/api/v1/orgs/123/agents", None, "org_id"),
        ("GET", "/api/v1/sessions/zzz", None, "session_id"),
        ("GET", "/api/v1/orgs/{org}/agents?limit=0", None, "limit"),
        ("GET", "/api/v1/orgs/{org}/agents?limit=101", None, "limit"),
        ("GET", "/api/v1/orgs/{org}/agents?offset=-1", None, "offset"),
        ("POST", "/api/v1/agents/{agent}/phone-numbers", {"number": "0155501234"}, "number"),
        ("POST", "/api/v1/agents/{agent}/phone-numbers", {"number": "+1555" + "0" * 20}, "number"),
        ("DELETE", "/api/v1/agents/{agent}/phone-numbers/5550100", None, "number"),
        ("POST", "/api/v1/orgs/{org}/agents", {"name": "x" * 201}, "name"),
        ("POST", "/api/v1/orgs/{org}/agents", {"name": ""}, "name"),
        ("POST", "/api/v1/orgs/{org}/agents", {"name": "a", "instructions": "x" * 20_001}, "instructions"),
        ("POST", "/api/v1/orgs/{org}/agents", {"name": "a", "temperature": 3}, "temperature"),
        ("POST", "/api/v1/orgs/{org}/agents", {"name": "a", "colour": "red"}, "colour"),
        (
            "POST",
            "/api/v1/orgs/{org}/agents",
            {
                "name": "a",
                "tools": [
                    {"name": "t", "description": "d", "url": "http://h/x", "parameters": {"type": "string"}}
                ],
            },
            "tools",
        ),
        (
            "POST",
            "/api/v1/orgs/{org}/agents",
            {
                "name": "a",
                "tools": [{"name": "t", "description": "d", "url": "http://h/x", "parameters": {"type": 12}}],
            },
            "tools",
        ),
        (
            "POST",
            "/api/v1/orgs/{org}/agents",
            {"name": "a", "tools": [{**TOOL, "parameters": _nested_schema(100)}]},
            "flatten it",
        ),
        (
            "POST",
            "/api/v1/orgs/{org}/agents",
            {"name": "a", "tools": [{"name": "t", "description": "d", "url": "not a url"}]},
            "tools",
        ),
        (
            "POST",
            "/api/v1/orgs/{org}/agents",
            {"name": "a", "tools": [{"type": "mcp", "name": "t", "description": "d", "url": "http://h/x"}]},
            "tools",
        ),
        ("PATCH", "/api/v1/agents/{agent}", {"name": None}, "name"),
        ("POST", "/api/v1/orgs/{org}/members", {"email": "not-an-email"}, "email"),
        ("POST", "/api/v1/orgs/{org}/members", {"email": "a@example.test", "role": "god"}, "role"),
        ("POST", "/api/v1/auth/login", {"email": "a@example.test"}, "password"),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_field(
    world: World, method: str, path: str, body: dict[str, Any] | None, field: str
) -> None:
    before = await _snapshot(world.app.runtime)
    url = path.format(org=world.org_id, agent=world.agent_id)
    response = await world.app.client.request(method, url, json=body, headers=world.owner.headers)
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text
    assert await _snapshot(world.app.runtime) == before


async def test_duplicate_email_is_a_409_and_nothing_is_half_written(world: World) -> None:
    client, headers = world.app.client, world.owner.headers
    before = await _snapshot(world.app.runtime)
    response = await client.post(
        f"/api/v1/orgs/{world.org_id}/members",
        json={"email": world.outsider.email, "password": "another-long-password"},
        headers=headers,
    )
    assert response.status_code == 409
    assert "email" in response.json()["detail"]
    again = await client.post(
        f"/api/v1/orgs/{world.org_id}/members", json={"email": world.member.email}, headers=headers
    )
    assert again.status_code == 409
    assert await _snapshot(world.app.runtime) == before


async def test_a_removal_redis_cannot_note_is_not_made(world: World, silent_port: int) -> None:
    """Unnoted, the removed member's access token would go on admitting test calls for up to 15
    minutes (the token-service authorises from the token's `orgs` claim)."""
    runtime, client = world.app.runtime, world.app.client
    working = runtime.redis
    runtime.redis = Redis.from_url(f"redis://127.0.0.1:{silent_port}/0", socket_timeout=0.5)
    try:
        removal = await client.delete(
            f"/api/v1/orgs/{world.org_id}/members/{world.member.user_id}", headers=world.owner.headers
        )
    finally:
        await runtime.redis.aclose()
        runtime.redis = working
    assert removal.status_code == 503
    assert "the member was not removed" in removal.json()["detail"]
    members = await client.get(f"/api/v1/orgs/{world.org_id}/members", headers=world.owner.headers)
    assert str(world.member.user_id) in {member["user_id"] for member in members.json()}


async def test_new_member_account_then_removal(world: World) -> None:
    client, headers = world.app.client, world.owner.headers
    email = f"new-{secrets.token_hex(4)}@example.test"
    added = await client.post(
        f"/api/v1/orgs/{world.org_id}/members",
        json={"email": email, "password": "a-long-password", "role": "admin"},
        headers=headers,
    )
    assert added.status_code == 201
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": "a-long-password"})
    admin_headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    # An admin may not remove or make an owner.
    removal = await client.delete(
        f"/api/v1/orgs/{world.org_id}/members/{world.owner.user_id}", headers=admin_headers
    )
    assert removal.status_code == 403
    user_id = added.json()["user_id"]
    gone = await client.delete(f"/api/v1/orgs/{world.org_id}/members/{user_id}", headers=headers)
    assert gone.status_code == 204
    after = await client.get(f"/api/v1/orgs/{world.org_id}", headers=admin_headers)
    assert after.status_code == 404


async def test_an_account_another_org_made_is_not_added_by_its_email(world: World) -> None:
    """Otherwise the outsider's admin makes an account for a colleague of Org A, chooses its
    password, and is let into Org A the day its owner adds that colleague by email."""
    client = world.app.client
    squatted = f"colleague-{secrets.token_hex(4)}@example.test"
    outsider_org = (await client.get("/api/v1/orgs", headers=world.outsider.headers)).json()[0]["id"]
    made = await client.post(
        f"/api/v1/orgs/{outsider_org}/members",
        json={"email": squatted, "password": "chosen-by-the-outsider"},
        headers=world.outsider.headers,
    )
    assert made.status_code == 201

    refused = await client.post(
        f"/api/v1/orgs/{world.org_id}/members", json={"email": squatted}, headers=world.owner.headers
    )
    assert refused.status_code == 409
    assert "another organisation made" in refused.json()["detail"]
    assert "platform operator" in refused.json()["detail"]
    login = await client.post(
        "/api/v1/auth/login", json={"email": squatted, "password": "chosen-by-the-outsider"}
    )
    squatter = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert [org["id"] for org in (await client.get("/api/v1/orgs", headers=squatter)).json()] == [
        outsider_org
    ]

    # The organisation that made the account may take it back after removing it.
    user_id = made.json()["user_id"]
    gone = await client.delete(
        f"/api/v1/orgs/{outsider_org}/members/{user_id}", headers=world.outsider.headers
    )
    assert gone.status_code == 204
    back = await client.post(
        f"/api/v1/orgs/{outsider_org}/members", json={"email": squatted}, headers=world.outsider.headers
    )
    assert back.status_code == 201


async def test_sessions_of_an_agent_and_one_session(world: World) -> None:
    client, headers = world.app.client, world.member.headers
    page = await client.get(f"/api/v1/agents/{world.agent_id}/sessions", headers=headers)
    assert [row["id"] for row in page.json()["items"]] == [str(world.session_id)]
    one = await client.get(f"/api/v1/sessions/{world.session_id}", headers=headers)
    assert one.json()["status"] == "ended"
    assert one.json()["end_detail"] == "the caller said goodbye"
    assert one.json()["transcript"] == []
    assert (await client.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=headers)).status_code == 404


async def test_operational_endpoints(world: World) -> None:
    client = world.app.client
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
    await client.get(f"/api/v1/agents/{world.agent_id}", headers=world.owner.headers)
    metrics = (await client.get("/metrics")).text
    histogram = [
        line
        for line in metrics.splitlines()
        if line.startswith("agentline_http_request_duration_seconds_count")
        and 'route="/api/v1/agents/{agent_id}"' in line
    ]
    assert histogram, "no latency histogram for the agent route"
    assert "agentline_registry_outbox_pending" in metrics
    assert 'agentline_bus_publishes_total{result="failed"}' in metrics


async def test_readyz_is_503_when_the_broker_connection_is_gone(app_factory: Any) -> None:
    async with app_factory() as running:
        await running.runtime.bus.close()
        response = await running.client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["broker"] == "unavailable"


def test_openapi_names_every_route_with_a_summary(world: World) -> None:
    schema = world.app.app.openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("description"), f"{method.upper()} {path} has no description"


async def test_httpx_sees_correlation_id_echoed(world: World) -> None:
    response = await world.app.client.get("/healthz", headers={"x-correlation-id": "abc123"})
    assert response.headers["x-correlation-id"] == "abc123"
    assert isinstance(response, httpx.Response)
