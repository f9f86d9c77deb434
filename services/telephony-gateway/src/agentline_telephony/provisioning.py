"""Provisioning of LiveKit SIP: the inbound trunk Twilio dials into and the rule that names the rooms.

Idempotent: the trunk and the rule are found by name and replaced with the desired state, or created
when missing, so running the command again converges instead of duplicating (LiveKit itself would
accept a second trunk with the same name and then refuse the calls as ambiguous).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from agentline_common.events import CALL_SID_ATTRIBUTE, CALL_SID_SIP_HEADER
from agentline_common.rooms import PHONE_PREFIX, require_e164
from livekit.api import LiveKitAPI
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration
from livekit.protocol.sip import (
    CreateSIPDispatchRuleRequest,
    CreateSIPInboundTrunkRequest,
    ListSIPDispatchRuleRequest,
    ListSIPInboundTrunkRequest,
    SIPDispatchRule,
    SIPDispatchRuleCallee,
    SIPDispatchRuleInfo,
    SIPInboundTrunkInfo,
)

from agentline_telephony.settings import TelephonySettings

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class SipPlan:
    """The desired LiveKit SIP configuration."""

    trunk_name: str
    rule_name: str
    agent_name: str
    numbers: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()
    auth_username: str = ""
    auth_password: str = ""
    allow_open: bool = False
    """Accept a trunk that neither credentials nor addresses restrict (a local machine only)."""

    @property
    def is_open(self) -> bool:
        """Whether LiveKit would accept an INVITE from anyone: no allowed addresses and no digest
        credentials (a username without a password, or the reverse, authenticates nothing)."""
        return not self.allowed_addresses and not (self.auth_username and self.auth_password)


class OpenTrunkRefused(Exception):
    """The plan would create a trunk that accepts calls from anyone, and that was not asked for."""


OPEN_TRUNK_REFUSAL = (
    "refusing to provision a SIP trunk that accepts calls from anyone on the internet (no allowed "
    "addresses, no credentials): set SIP_USERNAME and SIP_PASSWORD (the gateway's TwiML sends them) "
    "and/or SIP_ALLOWED_ADDRESSES or --allowed-address (Twilio's signalling ranges); on a local "
    "machine only, SIP_ALLOW_OPEN_TRUNK=true or --allow-open-trunk"
)


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    trunk_id: str
    rule_id: str
    trunk_created: bool
    rule_created: bool


def plan_from_settings(
    settings: TelephonySettings,
    *,
    numbers: list[str] | None = None,
    allowed_addresses: list[str] | None = None,
    allow_open: bool = False,
) -> SipPlan:
    """The plan from settings, with numbers and addresses given on the command line taking precedence."""
    chosen_numbers = numbers if numbers else settings.sip_trunk_numbers
    return SipPlan(
        trunk_name=settings.sip_trunk_name,
        rule_name=settings.sip_dispatch_rule_name,
        agent_name=settings.agent_name,
        numbers=tuple(require_e164(number) for number in chosen_numbers),
        allowed_addresses=tuple(allowed_addresses or settings.sip_allowed_addresses),
        auth_username=settings.sip_username,
        auth_password=settings.sip_password.get_secret_value() if settings.sip_password else "",
        allow_open=allow_open or settings.sip_allow_open_trunk,
    )


def desired_trunk(plan: SipPlan) -> SIPInboundTrunkInfo:
    """The inbound trunk: our numbers, Twilio's addresses, credentials, and the CallSid header mapped
    to an attribute so the worker names the same session as the gateway."""
    return SIPInboundTrunkInfo(
        name=plan.trunk_name,
        numbers=list(plan.numbers),
        allowed_addresses=list(plan.allowed_addresses),
        auth_username=plan.auth_username,
        auth_password=plan.auth_password,
        headers_to_attributes={CALL_SID_SIP_HEADER: CALL_SID_ATTRIBUTE},
    )


def desired_rule(plan: SipPlan, trunk_id: str) -> SIPDispatchRuleInfo:
    """A callee rule: room ``call_{dialled number}_{random suffix}``, and the agent dispatched into it."""
    return SIPDispatchRuleInfo(
        name=plan.rule_name,
        trunk_ids=[trunk_id],
        rule=SIPDispatchRule(
            dispatch_rule_callee=SIPDispatchRuleCallee(room_prefix=PHONE_PREFIX, randomize=True)
        ),
        room_config=RoomConfiguration(agents=[RoomAgentDispatch(agent_name=plan.agent_name)]),
    )


async def provision_sip(api: LiveKitAPI, plan: SipPlan) -> ProvisionResult:
    """Create or update the trunk, then the rule bound to it; returns their ids. An open trunk (see
    `SipPlan.is_open`) is refused unless the plan allows it, before LiveKit is asked anything."""
    if plan.is_open and not plan.allow_open:
        raise OpenTrunkRefused(OPEN_TRUNK_REFUSAL)
    if plan.is_open:
        log.warning("sip.open_trunk", name=plan.trunk_name, reason="allowed explicitly; local use only")
    sip = api.sip
    trunks = [
        trunk
        for trunk in (await sip.list_inbound_trunk(ListSIPInboundTrunkRequest())).items
        if trunk.name == plan.trunk_name
    ]
    if trunks:
        trunk = await sip.update_inbound_trunk(trunks[0].sip_trunk_id, desired_trunk(plan))
    else:
        trunk = await sip.create_inbound_trunk(CreateSIPInboundTrunkRequest(trunk=desired_trunk(plan)))
    if len(trunks) > 1:
        log.warning("sip.duplicate_trunks", name=plan.trunk_name, kept=trunk.sip_trunk_id)

    rules = [
        rule
        for rule in (await sip.list_dispatch_rule(ListSIPDispatchRuleRequest())).items
        if rule.name == plan.rule_name
    ]
    rule_info = desired_rule(plan, trunk.sip_trunk_id)
    if rules:
        rule = await sip.update_dispatch_rule(rules[0].sip_dispatch_rule_id, rule_info)
    else:
        rule = await sip.create_dispatch_rule(CreateSIPDispatchRuleRequest(dispatch_rule=rule_info))
    if len(rules) > 1:
        log.warning("sip.duplicate_dispatch_rules", name=plan.rule_name, kept=rule.sip_dispatch_rule_id)
    log.info(
        "sip.provisioned",
        trunk_id=trunk.sip_trunk_id,
        rule_id=rule.sip_dispatch_rule_id,
        numbers=list(plan.numbers),
        trunk_created=not trunks,
        rule_created=not rules,
    )
    return ProvisionResult(
        trunk_id=trunk.sip_trunk_id,
        rule_id=rule.sip_dispatch_rule_id,
        trunk_created=not trunks,
        rule_created=not rules,
    )
