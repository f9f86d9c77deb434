"""The `agentline-registry` command line, run as a real process on a real SQLite database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from agentline_common.rate_limits import SlidingWindowLimit
from agentline_registry import service
from agentline_registry.credentials import SigningKey
from agentline_registry.database import create_engine, session_factory
from agentline_registry.schemas import MemberCreate
from agentline_registry.tables import OUTBOX
from redis.asyncio import Redis
from sqlalchemy import select

pytestmark = pytest.mark.integration


class Cli:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    async def run(self, *args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentline_registry",
            *args,
            env={**os.environ, "DATABASE_URL": self.database_url, "ENVIRONMENT": "test"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode or 0, stdout.decode(), stderr.decode()

    async def ok(self, *args: str) -> dict[str, Any]:
        code, stdout, stderr = await self.run(*args)
        assert code == 0, stderr
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        return result


@pytest.fixture
async def cli(tmp_path: Path) -> Cli:
    runner = Cli(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    assert await runner.ok("migrate") == {"migrated": True}
    return runner


async def _can_log_in(database_url: str, redis_url: str, email: str, password: str) -> bool:
    engine = create_engine(database_url)
    redis = Redis.from_url(redis_url)
    failures = SlidingWindowLimit(
        redis, key_prefix=f"test-{uuid.uuid4().hex}:", limit=5, window_seconds=60, timeout=2.0
    )
    try:
        async with session_factory(engine)() as db:
            await service.login(
                db,
                email=email,
                password=password,
                failures=failures,
                key=SigningKey.generate(),
                issuer="i",
                audience="a",
                lifetime=timedelta(minutes=1),
            )
        return True
    except service.Unauthenticated:
        return False
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_seed_demo_is_idempotent_and_its_printed_login_works(cli: Cli, redis_url: str) -> None:
    first = await cli.ok("seed-demo")
    second = await cli.ok("seed-demo")
    assert first["email"] == "demo@agentline.local"
    assert (first["org_id"], first["agent_id"], first["user_id"]) == (
        second["org_id"],
        second["agent_id"],
        second["user_id"],
    )
    assert await _can_log_in(cli.database_url, redis_url, second["email"], second["password"])
    assert not await _can_log_in(cli.database_url, redis_url, first["email"], first["password"])


async def test_operator_commands_build_a_tenant(cli: Cli) -> None:
    user = await cli.ok("create-user", "--email", "Ops@Example.test", "--password", "long-password")
    assert user["email"] == "ops@example.test" and "password" not in user
    org = await cli.ok("create-org", "--name", "Acme", "--owner", user["user_id"])
    agent = await cli.ok(
        "create-agent", "--org", org["org_id"], "--name", "Front desk", "--temperature", "0.2"
    )
    number = await cli.ok("assign-number", "--agent", agent["agent_id"], "--number", "+14155550100")
    assert number == {"number": "+14155550100", "agent_id": agent["agent_id"]}
    member = await cli.ok(
        "create-user", "--email", "m@example.test", "--org", org["org_id"], "--role", "member"
    )
    assert member["role"] == "member" and len(member["password"]) >= 16


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("assign-number", "--agent", "00000000-0000-0000-0000-000000000000", "--number", "555"), "number"),
        (("create-agent", "--org", "00000000-0000-0000-0000-000000000000", "--name", "a"), "organisation"),
        (("create-org", "--name", ""), "name"),
        (("create-user", "--email", "x@example.test", "--password", "short"), "password"),
    ],
)
async def test_bad_input_exits_non_zero_naming_the_problem(
    cli: Cli, args: tuple[str, ...], named: str
) -> None:
    code, _, stderr = await cli.run(*args)
    assert code != 0
    assert named in stderr


async def test_duplicate_email_is_refused(cli: Cli) -> None:
    await cli.ok("create-user", "--email", "dup@example.test")
    code, _, stderr = await cli.run("create-user", "--email", "DUP@example.test")
    assert code != 0
    assert "email" in stderr and "already exists" in stderr


async def test_an_operator_adds_an_account_another_org_made_only_with_a_new_password(
    cli: Cli, redis_url: str
) -> None:
    engine = create_engine(cli.database_url)
    try:
        async with session_factory(engine)() as db:
            admin = await service.create_user(db, email="admin@x.test", password="admin-password")
            org_x = await service.create_org(db, owner=admin.id, name="X")
            made = MemberCreate(email="bob@corp.test", password="chosen-by-x-admin")
            await service.add_member(db, actor=admin.id, org_id=org_x.id, member=made)
            await db.commit()
    finally:
        await engine.dispose()
    corp_owner = await cli.ok("create-user", "--email", "owner@corp.test")
    corp = await cli.ok("create-org", "--name", "Corp", "--owner", corp_owner["user_id"])

    code, _, stderr = await cli.run("add-member", "--org", corp["org_id"], "--email", "bob@corp.test")
    assert code == 2
    assert "--reset-password" in stderr
    added = await cli.ok(
        "add-member", "--org", corp["org_id"], "--email", "bob@corp.test", "--reset-password"
    )
    assert added["role"] == "member"
    assert not await _can_log_in(cli.database_url, redis_url, "bob@corp.test", "chosen-by-x-admin")
    assert await _can_log_in(cli.database_url, redis_url, "bob@corp.test", added["password"])

    # A new password is set whoever manages the account, or the operator hands out one that fails.
    carol = await cli.ok("create-user", "--email", "carol@corp.test")
    reset = await cli.ok(
        "add-member", "--org", corp["org_id"], "--email", "carol@corp.test", "--reset-password"
    )
    assert await _can_log_in(cli.database_url, redis_url, "carol@corp.test", reset["password"])
    assert not await _can_log_in(cli.database_url, redis_url, "carol@corp.test", carol["password"])


async def test_create_org_with_an_unknown_owner_names_it_and_exits_2(cli: Cli) -> None:
    owner = "00000000-0000-0000-0000-000000000001"
    code, _, stderr = await cli.run("create-org", "--name", "Acme", "--owner", owner)
    assert code == 2
    assert f"no user with id {owner}" in stderr
    assert "Traceback" not in stderr


async def test_seed_demo_reactivates_its_agent_and_announces_it(cli: Cli) -> None:
    seeded = await cli.ok("seed-demo")
    engine = create_engine(cli.database_url)
    try:
        async with session_factory(engine)() as db:
            await service.set_active(
                db, actor=uuid.UUID(seeded["user_id"]), agent_id=uuid.UUID(seeded["agent_id"]), active=False
            )
            await db.commit()
        await cli.ok("seed-demo")
        async with session_factory(engine)() as db:
            agent = await service.get_agent(
                db, actor=uuid.UUID(seeded["user_id"]), agent_id=uuid.UUID(seeded["agent_id"])
            )
            announced = (await db.execute(select(OUTBOX.c.body))).scalars().all()
    finally:
        await engine.dispose()
    assert agent.active
    changes = [json.loads(body)["data"]["change"] for body in announced]
    assert sorted(changes) == ["created", "updated", "updated"]
