"""What the gateway decides for each Twilio webhook.

The decisions are plain functions of the form and the agent (`answer_for_agent`, `parse_incoming`,
...); `answer_incoming` and `handle_status` wire them to the look-up and the call store, which are
Protocols so unit tests can run them on in-memory fakes.

Idempotency lives in the call store: the first answer for a CallSid is kept for retries, and the
events of a call have ids derived from its CallSid, so the outbox takes each of them once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Protocol

import structlog
from agentline_common.agents import AgentConfig
from agentline_common.events import (
    SESSION_NAMESPACE,
    PhoneCall,
    SessionEnded,
    SessionEndedData,
    SessionRequested,
    SessionRequestedData,
    phone_session_id,
    utc_now,
)
from agentline_common.registry_client import AgentNotFound, RegistryUnavailable
from agentline_common.rooms import is_e164

from agentline_telephony import twiml
from agentline_telephony.twiml import SipTarget

log = structlog.get_logger()

MAX_FIELD_LENGTH = 64
STORE_DEADLINE_SECONDS = 3.0
"""Bound on keeping a call's event and answer. Twilio gives up on a webhook after 15 s and plays its
own error; a database that accepts connections but never replies must not hold the caller that long."""
FAILED_CALL_STATUSES = frozenset({"busy", "failed", "no-answer", "canceled"})


class Outcome(StrEnum):
    """What happened to an incoming call; also the `outcome` label of the metrics."""

    CONNECTED = "connected"
    UNKNOWN_NUMBER = "unknown_number"
    AGENT_INACTIVE = "agent_inactive"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    BAD_REQUEST = "bad_request"
    RETRIED = "retried"


NOT_REMEMBERED = frozenset({Outcome.REGISTRY_UNAVAILABLE, Outcome.STORE_UNAVAILABLE, Outcome.BAD_REQUEST})


class CallStoreUnavailable(Exception):
    """The call store could not keep a call's event durably (its database failed or timed out)."""


class BadCallForm(ValueError):
    """A signed webhook whose form lacks a field we need, or carries it malformed."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class IncomingCall:
    call_sid: str
    from_number: str
    to_number: str


@dataclass(frozen=True, slots=True)
class CallStatus:
    call_sid: str
    status: str
    from_dial: bool
    """True for the <Dial> action callback (DialCallStatus), False for the call's status callback."""


@dataclass(frozen=True, slots=True)
class CallSession:
    agent_id: uuid.UUID
    org_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    twiml: str
    agent: AgentConfig | None = None
    event: SessionRequested | None = None

    @property
    def remembered(self) -> bool:
        """Definite answers are kept for retries; a transient one (registry or store down) is not, so
        a retried webhook gets another chance to reach the agent."""
        return self.outcome not in NOT_REMEMBERED


class AgentLookup(Protocol):
    async def agent_by_number(self, number: str) -> AgentConfig: ...


class CallStore(Protocol):
    async def answer_of(self, call_sid: str) -> str | None:
        """The TwiML already given for `call_sid`, if any."""
        ...

    async def remember(self, call: IncomingCall, answer: Answer) -> str:
        """Queue the answer's event, keep the answer for retries, and return the TwiML that won (an
        earlier answer when a concurrent retry stored one first).

        Raises CallStoreUnavailable when the event could not be stored."""
        ...

    async def session_of(self, call_sid: str) -> CallSession | None:
        """Agent and organisation of the call's session; None when the call was never dialled."""
        ...

    async def end_unreached(self, event: SessionEnded) -> bool:
        """Queue the `session.ended` of a call that never reached its agent, once per call.

        False when it was queued before (a repeated or second failure callback). Raises
        CallStoreUnavailable when the event could not be stored."""
        ...


def _required(form: Mapping[str, str], field: str) -> str:
    value = form.get(field, "").strip()
    if not value:
        raise BadCallForm(field, "missing")
    if len(value) > MAX_FIELD_LENGTH:
        raise BadCallForm(field, f"longer than {MAX_FIELD_LENGTH} characters")
    return value


def parse_incoming(form: Mapping[str, str]) -> IncomingCall:
    """The fields of Twilio's voice webhook that we act on; raises BadCallForm naming the field."""
    call_sid = _required(form, "CallSid")
    to_number = _required(form, "To")
    if not is_e164(to_number):
        raise BadCallForm("To", "not an E.164 number")
    from_number = form.get("From", "").strip()
    if len(from_number) > MAX_FIELD_LENGTH:
        raise BadCallForm("From", f"longer than {MAX_FIELD_LENGTH} characters")
    return IncomingCall(call_sid=call_sid, from_number=from_number, to_number=to_number)


def parse_status(form: Mapping[str, str]) -> CallStatus:
    """A status callback or a <Dial> action: DialCallStatus, when present, says how the bridge ended."""
    call_sid = _required(form, "CallSid")
    if form.get("DialCallStatus"):
        return CallStatus(call_sid=call_sid, status=_required(form, "DialCallStatus"), from_dial=True)
    return CallStatus(call_sid=call_sid, status=_required(form, "CallStatus"), from_dial=False)


UNKNOWN_ROOM = ""
"""The room of a phone call is not known when Twilio calls us: LiveKit SIP appends its random suffix
only when the INVITE arrives. `session.requested` says so with an empty room name, which the registry
fills in from the worker's `session.started` (it keeps the first non-empty name it sees, so a prefix
such as ``call_{number}`` here would stick and hide the real room)."""


def requested_event_id(call_sid: str) -> uuid.UUID:
    """Deterministic, so even a duplicate that slipped past the store is one event to consumers."""
    return uuid.uuid5(SESSION_NAMESPACE, f"telephony:requested:{call_sid}")


def ended_event_id(call_sid: str) -> uuid.UUID:
    return uuid.uuid5(SESSION_NAMESPACE, f"telephony:ended:{call_sid}")


def session_requested(call: IncomingCall, agent: AgentConfig, *, ttl: timedelta) -> SessionRequested:
    return SessionRequested(
        id=requested_event_id(call.call_sid),
        org_id=agent.org_id,
        agent_id=agent.id,
        session_id=phone_session_id(call.call_sid),
        data=SessionRequestedData(
            kind="phone",
            room_name=UNKNOWN_ROOM,
            call=PhoneCall(sid=call.call_sid, from_number=call.from_number, to_number=call.to_number),
            expires_at=utc_now() + ttl,
        ),
    )


def session_ended_unreached(status: CallStatus, session: CallSession) -> SessionEnded:
    return SessionEnded(
        id=ended_event_id(status.call_sid),
        org_id=session.org_id,
        agent_id=session.agent_id,
        session_id=phone_session_id(status.call_sid),
        data=SessionEndedData(reason="call_failed", detail=f"twilio call status: {status.status}"),
    )


def answer_for_agent(call: IncomingCall, agent: AgentConfig, *, target: SipTarget, ttl: timedelta) -> Answer:
    """Bridge to LiveKit SIP for an active agent; a polite refusal for an inactive one."""
    if not agent.active:
        return Answer(
            outcome=Outcome.AGENT_INACTIVE,
            twiml=twiml.say_and_hang_up(twiml.AGENT_INACTIVE_MESSAGE),
            agent=agent,
        )
    return Answer(
        outcome=Outcome.CONNECTED,
        twiml=twiml.dial_sip(call.to_number, target, call.call_sid),
        agent=agent,
        event=session_requested(call, agent, ttl=ttl),
    )


def answer_unknown_number() -> Answer:
    return Answer(outcome=Outcome.UNKNOWN_NUMBER, twiml=twiml.say_and_hang_up(twiml.UNKNOWN_NUMBER_MESSAGE))


def answer_registry_unavailable() -> Answer:
    return Answer(
        outcome=Outcome.REGISTRY_UNAVAILABLE,
        twiml=twiml.say_and_hang_up(twiml.UNAVAILABLE_MESSAGE),
    )


def answer_store_unavailable() -> Answer:
    """No bridge without the session's event stored: the caller is told to call again, as when the
    registry does not answer, and nothing is remembered, so a retried webhook gets another chance."""
    return Answer(outcome=Outcome.STORE_UNAVAILABLE, twiml=twiml.say_and_hang_up(twiml.UNAVAILABLE_MESSAGE))


def answer_bad_request() -> Answer:
    """Twilio must get TwiML even for a form we cannot use; a 4xx would make it play its own error."""
    return Answer(outcome=Outcome.BAD_REQUEST, twiml=twiml.say_and_hang_up(twiml.BAD_REQUEST_MESSAGE))


def status_reply(status: CallStatus) -> str:
    """After a failed bridge the caller still hears why; after any other callback, nothing more."""
    if status.from_dial:
        if status.status in FAILED_CALL_STATUSES:
            return twiml.say_and_hang_up(twiml.DIAL_FAILED_MESSAGE)
        return twiml.hang_up()
    return twiml.empty_response()


async def answer_incoming(
    form: Mapping[str, str],
    *,
    lookup: AgentLookup,
    calls: CallStore,
    target: SipTarget,
    ttl: timedelta,
    store_deadline: float = STORE_DEADLINE_SECONDS,
) -> Answer:
    """The TwiML for Twilio's incoming-call webhook; never raises for anything a caller can cause.

    A store that does not keep the call within `store_deadline` counts as unavailable: the caller is
    told so in TwiML, rather than Twilio giving up on us.
    """
    try:
        call = parse_incoming(form)
    except BadCallForm as error:
        log.warning("twilio.bad_form", field=error.field, problem=str(error))
        return answer_bad_request()
    if (earlier := await calls.answer_of(call.call_sid)) is not None:
        log.info("twilio.retry_answered", call_sid=call.call_sid)
        return Answer(outcome=Outcome.RETRIED, twiml=earlier)
    try:
        agent = await lookup.agent_by_number(call.to_number)
    except AgentNotFound:
        answer = answer_unknown_number()
    except RegistryUnavailable as error:
        log.warning("twilio.registry_unavailable", call_sid=call.call_sid, error=str(error))
        return answer_registry_unavailable()
    else:
        answer = answer_for_agent(call, agent, target=target, ttl=ttl)
    try:
        async with asyncio.timeout(store_deadline):
            stored = await calls.remember(call, answer)
    except (CallStoreUnavailable, TimeoutError) as error:
        log.error("twilio.call_not_stored", call_sid=call.call_sid, error=str(error) or type(error).__name__)
        return answer_store_unavailable()
    if stored != answer.twiml:
        return Answer(outcome=Outcome.RETRIED, twiml=stored)
    log.info(
        "twilio.call_answered",
        call_sid=call.call_sid,
        outcome=answer.outcome.value,
        agent_id=str(answer.agent.id) if answer.agent else None,
    )
    return answer


async def handle_status(
    form: Mapping[str, str], *, calls: CallStore, store_deadline: float = STORE_DEADLINE_SECONDS
) -> tuple[str, bool]:
    """Reply to a status callback; end the session of a call that never reached its agent.

    Returns the TwiML and whether a `session.ended` was queued. A completed call ends nothing here:
    the worker ends its own session with the transcript, and the registry expires a session that was
    requested but never started. The store gets `store_deadline`, as for an incoming call.
    """
    try:
        status = parse_status(form)
    except BadCallForm as error:
        log.warning("twilio.bad_status_form", field=error.field, problem=str(error))
        return twiml.empty_response(), False
    ended = False
    if status.status in FAILED_CALL_STATUSES:
        session = await calls.session_of(status.call_sid)
        if session is not None:
            event = session_ended_unreached(status, session)
            try:
                async with asyncio.timeout(store_deadline):
                    ended = await calls.end_unreached(event)
            except (CallStoreUnavailable, TimeoutError) as error:
                # The registry's expiry sweep still ends the session that was requested but never started.
                log.error(
                    "twilio.call_end_not_stored",
                    call_sid=status.call_sid,
                    error=str(error) or type(error).__name__,
                )
    log.info(
        "twilio.status_received",
        call_sid=status.call_sid,
        status=status.status,
        dial=status.from_dial,
        session_ended=ended,
    )
    return status_reply(status), ended
