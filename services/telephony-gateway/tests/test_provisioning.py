"""SIP provisioning against the real LiveKit server (running with Redis, so its SIP APIs work)."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from agentline_common.testing.servers import free_port
from agentline_telephony.provisioning import (
    OpenTrunkRefused,
    SipPlan,
    plan_from_settings,
    provision_sip,
)
from agentline_telephony.settings import TelephonySettings
from livekit.api import LiveKitAPI
from livekit.protocol.sip import (
    DeleteSIPDispatchRuleRequest,
    DeleteSIPTrunkRequest,
    ListSIPDispatchRuleRequest,
    ListSIPInboundTrunkRequest,
)
from pydantic import SecretStr, ValidationError

pytestmark = pytest.mark.integration


def unique_number() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))


@pytest_asyncio.fixture(loop_scope="session")
async def livekit_api(livekit_server: Any) -> AsyncIterator[LiveKitAPI]:
    async with LiveKitAPI(livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret) as api:
        yield api


@pytest_asyncio.fixture(loop_scope="session")
async def plan(livekit_api: LiveKitAPI) -> AsyncIterator[SipPlan]:
    """A plan with names and numbers of its own; whatever it created is deleted afterwards."""
    name = f"test-{secrets.token_hex(4)}"
    yield SipPlan(
        trunk_name=name,
        rule_name=name,
        agent_name="agentline-agent",
        numbers=(unique_number(),),
        allowed_addresses=("127.0.0.1/32",),
        auth_username="twilio",
        auth_password=secrets.token_urlsafe(32),
    )
    for rule in (await livekit_api.sip.list_dispatch_rule(ListSIPDispatchRuleRequest())).items:
        if rule.name == name:
            await livekit_api.sip.delete_dispatch_rule(
                DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
            )
    for trunk in (await livekit_api.sip.list_inbound_trunk(ListSIPInboundTrunkRequest())).items:
        if trunk.name == name:
            await livekit_api.sip.delete_trunk(DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))


async def run_json(command: list[str], env: dict[str, str]) -> Any:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def named(api: LiveKitAPI, name: str) -> tuple[list[Any], list[Any]]:
    trunks = (await api.sip.list_inbound_trunk(ListSIPInboundTrunkRequest())).items
    rules = (await api.sip.list_dispatch_rule(ListSIPDispatchRuleRequest())).items
    return [t for t in trunks if t.name == name], [r for r in rules if r.name == name]


async def test_provisioning_creates_the_trunk_and_callee_rule(livekit_api: LiveKitAPI, plan: SipPlan) -> None:
    result = await provision_sip(livekit_api, plan)

    assert (result.trunk_created, result.rule_created) == (True, True)
    (trunk,), (rule,) = await named(livekit_api, plan.trunk_name)
    assert trunk.sip_trunk_id == result.trunk_id
    assert list(trunk.numbers) == list(plan.numbers)
    assert list(trunk.allowed_addresses) == ["127.0.0.1/32"]
    assert trunk.auth_username == "twilio"
    assert dict(trunk.headers_to_attributes) == {"X-Agentline-CallSid": "sip.h.x-agentline-callsid"}
    assert rule.sip_dispatch_rule_id == result.rule_id
    assert list(rule.trunk_ids) == [result.trunk_id]
    assert rule.rule.WhichOneof("rule") == "dispatch_rule_callee"
    assert rule.rule.dispatch_rule_callee.room_prefix == "call"
    assert rule.rule.dispatch_rule_callee.randomize is True
    assert [agent.agent_name for agent in rule.room_config.agents] == ["agentline-agent"]


async def test_provisioning_again_updates_instead_of_duplicating(
    livekit_api: LiveKitAPI, plan: SipPlan
) -> None:
    first = await provision_sip(livekit_api, plan)
    changed = SipPlan(
        trunk_name=plan.trunk_name,
        rule_name=plan.rule_name,
        agent_name="agentline-agent-v2",
        numbers=(*plan.numbers, unique_number()),
        allowed_addresses=plan.allowed_addresses,
    )

    second = await provision_sip(livekit_api, changed)

    assert (second.trunk_created, second.rule_created) == (False, False)
    assert (second.trunk_id, second.rule_id) == (first.trunk_id, first.rule_id)
    (trunk,), (rule,) = await named(livekit_api, plan.trunk_name)
    assert list(trunk.numbers) == list(changed.numbers)
    assert trunk.auth_username == ""
    assert [agent.agent_name for agent in rule.room_config.agents] == ["agentline-agent-v2"]


async def test_the_console_script_provisions_idempotently(
    livekit_server: Any, livekit_api: LiveKitAPI, plan: SipPlan
) -> None:
    env = {
        "LIVEKIT_URL": livekit_server.http_url,
        "LIVEKIT_API_KEY": livekit_server.api_key,
        "LIVEKIT_API_SECRET": livekit_server.api_secret,
        "SIP_TRUNK_NAME": plan.trunk_name,
        "SIP_DISPATCH_RULE_NAME": plan.rule_name,
        "SIP_ALLOWED_ADDRESSES": "127.0.0.1/32,127.0.0.2",
        "PATH": "/usr/bin:/bin",
    }
    command = [sys.executable, "-m", "agentline_telephony", "provision-sip", "--number", plan.numbers[0]]

    runs = [await run_json(command, env) for _ in range(2)]

    assert runs[0]["trunk_created"] and runs[0]["rule_created"]
    assert not runs[1]["trunk_created"] and not runs[1]["rule_created"]
    assert runs[1]["trunk_id"] == runs[0]["trunk_id"]
    trunks, rules = await named(livekit_api, plan.trunk_name)
    assert len(trunks) == 1 and len(rules) == 1
    assert list(trunks[0].allowed_addresses) == ["127.0.0.1/32", "127.0.0.2"]


def run_provision_sip(
    *, url: str, key: str, secret: str, number: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`agentline-telephony provision-sip --number NUMBER` against the LiveKit at `url`, with digest
    credentials unless `settings` (more environment) say otherwise."""
    env = {
        "LIVEKIT_URL": url,
        "LIVEKIT_API_KEY": key,
        "LIVEKIT_API_SECRET": secret,
        "SIP_USERNAME": "twilio",
        "SIP_PASSWORD": secrets.token_urlsafe(32),
        "PATH": "/usr/bin:/bin",
        **settings,
    }
    return subprocess.run(  # noqa: S603 (our own console script, fixed arguments)
        [sys.executable, "-m", "agentline_telephony", "provision-sip", "--number", number],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_console_script_refuses_a_number_that_is_not_e164(livekit_server: Any) -> None:
    run = run_provision_sip(
        url=livekit_server.http_url,
        key=livekit_server.api_key,
        secret=livekit_server.api_secret,
        number="555-1234",
    )

    assert run.returncode == 2
    assert "--number" in run.stderr and "E.164" in run.stderr


def test_the_console_script_says_when_livekit_cannot_be_reached() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    run = run_provision_sip(url=url, key="key", secret="s" * 32, number="+15551234567")

    assert run.returncode == 1
    assert f"LiveKit at {url} did not provision the SIP trunk" in run.stderr
    assert "Traceback" not in run.stderr


def open_plan(plan: SipPlan, *, allow_open: bool = False) -> SipPlan:
    """`plan` with neither allowed addresses nor credentials: LiveKit would take anyone's INVITE."""
    return replace(plan, allowed_addresses=(), auth_username="", auth_password="", allow_open=allow_open)


async def test_an_open_trunk_is_refused_before_livekit_is_asked(
    livekit_api: LiveKitAPI, plan: SipPlan
) -> None:
    for unrestricted in (open_plan(plan), replace(open_plan(plan), auth_username="twilio")):
        with pytest.raises(OpenTrunkRefused, match="SIP_USERNAME and SIP_PASSWORD"):
            await provision_sip(livekit_api, unrestricted)

    assert await named(livekit_api, plan.trunk_name) == ([], [])


async def test_an_open_trunk_is_provisioned_only_when_asked_for(
    livekit_api: LiveKitAPI, plan: SipPlan
) -> None:
    result = await provision_sip(livekit_api, open_plan(plan, allow_open=True))

    assert result.trunk_created
    (trunk,), _ = await named(livekit_api, plan.trunk_name)
    assert (list(trunk.allowed_addresses), trunk.auth_username) == ([], "")


async def test_credentials_alone_restrict_the_trunk_and_reach_livekit(
    livekit_api: LiveKitAPI, plan: SipPlan
) -> None:
    with_credentials_only = replace(plan, allowed_addresses=())

    await provision_sip(livekit_api, with_credentials_only)

    (trunk,), _ = await named(livekit_api, plan.trunk_name)
    assert trunk.auth_username == "twilio"
    assert trunk.auth_password == plan.auth_password


def test_the_console_script_refuses_an_open_trunk_naming_the_settings(livekit_server: Any) -> None:
    run = run_provision_sip(
        url=livekit_server.http_url,
        key=livekit_server.api_key,
        secret=livekit_server.api_secret,
        number=unique_number(),
        SIP_USERNAME="",
        SIP_PASSWORD="",
    )

    assert run.returncode == 2
    assert "accepts calls from anyone" in run.stderr
    assert "SIP_ALLOW_OPEN_TRUNK" in run.stderr and "Traceback" not in run.stderr


def test_the_settings_take_the_sip_credentials_as_a_pair() -> None:
    plan = plan_from_settings(TelephonySettings(sip_username="twilio", sip_password=SecretStr("p" * 32)))
    assert (plan.auth_username, plan.auth_password, plan.is_open) == ("twilio", "p" * 32, False)
    with pytest.raises(ValidationError, match="SIP_USERNAME and SIP_PASSWORD"):
        TelephonySettings(sip_password=SecretStr("p" * 32))
