"""The gateway's decisions, run on in-memory fakes of the look-up and the call store."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from agentline_common.agents import AgentConfig
from agentline_common.events import SessionEnded, phone_session_id
from agentline_common.registry_client import AgentNotFound, RegistryUnavailable
from agentline_telephony import service, twiml
from agentline_telephony.service import Answer, CallSession, CallStoreUnavailable, IncomingCall, Outcome
from agentline_telephony.twiml import SipTarget

pytestmark = pytest.mark.unit


def parse_twiml(document: str) -> ET.Element:
    """Parse TwiML we produced ourselves (trusted input, hence the plain parser)."""
    return ET.fromstring(document)  # noqa: S314


TARGET = SipTarget(host="127.0.0.1:5060")
TTL = timedelta(minutes=10)


def make_agent(number: str, *, active: bool = True) -> AgentConfig:
    return AgentConfig(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        name="Front desk",
        active=active,
        instructions="Be brief.",
        first_message="Hello!",
        phone_numbers=[number],
    )


def twilio_form(to: str, *, call_sid: str | None = None) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "a" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid or "CA" + uuid.uuid4().hex,
        "CallStatus": "ringing",
        "Called": to,
        "Caller": "+14155550100",
        "Direction": "inbound",
        "From": "+14155550100",
        "To": to,
    }


class FakeLookup:
    def __init__(self, agents: dict[str, AgentConfig], *, down: bool = False) -> None:
        self.agents = agents
        self.down = down

    async def agent_by_number(self, number: str) -> AgentConfig:
        if self.down:
            raise RegistryUnavailable("no answer within 1.5 s")
        try:
            return self.agents[number]
        except KeyError:
            raise AgentNotFound(number) from None


class FakeCalls:
    """The CallStore contract in dictionaries; `outbox` collects what would be published."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.sessions: dict[str, CallSession] = {}
        self.ended: set[uuid.UUID] = set()
        self.outbox: list[object] = []
        self.down = False
        """While True, storing an event fails as a database that does not answer would."""
        self.silent = False
        """While True, storing an event never finishes, as with a database that accepts connections
        and never replies."""

    async def answer_of(self, call_sid: str) -> str | None:
        return self.answers.get(call_sid)

    async def remember(self, call: IncomingCall, answer: Answer) -> str:
        if not answer.remembered:
            return answer.twiml
        if call.call_sid in self.answers:
            return self.answers[call.call_sid]
        if answer.event is not None:
            await self._store_event()
        self.answers[call.call_sid] = answer.twiml
        if answer.event is not None and answer.agent is not None:
            self.sessions[call.call_sid] = CallSession(answer.agent.id, answer.agent.org_id)
            self.outbox.append(answer.event)
        return answer.twiml

    async def session_of(self, call_sid: str) -> CallSession | None:
        return self.sessions.get(call_sid)

    async def end_unreached(self, event: SessionEnded) -> bool:
        await self._store_event()
        if event.id in self.ended:
            return False
        self.ended.add(event.id)
        self.outbox.append(event)
        return True

    async def _store_event(self) -> None:
        if self.down:
            raise CallStoreUnavailable("database is down")
        if self.silent:
            await asyncio.Event().wait()


async def answer(form: dict[str, str], lookup: FakeLookup, calls: FakeCalls) -> Answer:
    return await service.answer_incoming(form, lookup=lookup, calls=calls, target=TARGET, ttl=TTL)


def said(document: str) -> str:
    root = parse_twiml(document)
    assert [child.tag for child in root] == ["Say", "Hangup"], document
    return root[0].text or ""


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"To": "+15551234567"}, "CallSid"),
        ({"CallSid": "CA1"}, "To"),
        ({"CallSid": "CA1", "To": "5551234567"}, "To"),
        ({"CallSid": "CA1", "To": "+1555123456789012"}, "To"),
        ({"CallSid": "C" * 65, "To": "+15551234567"}, "CallSid"),
        ({"CallSid": "CA1", "To": "+15551234567", "From": "x" * 65}, "From"),
    ],
)
def test_parse_incoming_names_the_bad_field(form: dict[str, str], field: str) -> None:
    with pytest.raises(service.BadCallForm) as caught:
        service.parse_incoming(form)
    assert caught.value.field == field


async def test_an_active_agent_gets_the_call_bridged_and_one_session_requested() -> None:
    number = "+15551230001"
    agent = make_agent(number)
    calls = FakeCalls()
    form = twilio_form(number)

    result = await answer(form, FakeLookup({number: agent}), calls)

    assert result.outcome is Outcome.CONNECTED
    dialled = parse_twiml(result.twiml).find("./Dial/Sip")
    assert dialled is not None
    assert dialled.text == f"sip:{number}@127.0.0.1:5060?X-Agentline-CallSid={form['CallSid']}"
    (event,) = calls.outbox
    assert event == result.event
    assert result.event is not None
    assert result.event.session_id == phone_session_id(form["CallSid"])
    assert result.event.agent_id == agent.id
    assert result.event.org_id == agent.org_id
    assert result.event.data.kind == "phone"
    assert result.event.data.room_name == ""  # LiveKit names the room when the INVITE arrives
    assert result.event.data.call is not None
    assert result.event.data.call.sid == form["CallSid"]
    assert result.event.data.call.from_number == "+14155550100"
    assert result.event.data.call.to_number == number


async def test_a_retried_webhook_gets_the_same_answer_and_no_second_session() -> None:
    number = "+15551230002"
    lookup = FakeLookup({number: make_agent(number)})
    calls = FakeCalls()
    form = twilio_form(number)

    first = await answer(form, lookup, calls)
    lookup.down = True  # the retry must not even need the registry
    second = await answer(form, lookup, calls)

    assert second.twiml == first.twiml
    assert second.outcome is Outcome.RETRIED
    assert len(calls.outbox) == 1


async def test_unknown_number_and_inactive_agent_are_told_politely_without_a_session() -> None:
    number = "+15551230003"
    calls = FakeCalls()

    unknown = await answer(twilio_form("+15551239999"), FakeLookup({}), calls)
    inactive = await answer(
        twilio_form(number), FakeLookup({number: make_agent(number, active=False)}), calls
    )

    assert unknown.outcome is Outcome.UNKNOWN_NUMBER
    assert said(unknown.twiml) == twiml.UNKNOWN_NUMBER_MESSAGE
    assert inactive.outcome is Outcome.AGENT_INACTIVE
    assert said(inactive.twiml) == twiml.AGENT_INACTIVE_MESSAGE
    assert calls.outbox == []


@pytest.mark.parametrize(
    ("broken", "outcome"),
    [("registry", Outcome.REGISTRY_UNAVAILABLE), ("store", Outcome.STORE_UNAVAILABLE)],
)
async def test_a_dependency_down_is_told_politely_and_not_remembered_so_a_retry_can_connect(
    broken: str, outcome: Outcome
) -> None:
    """The registry or the call store down: no bridge (the session's event may be lost), still TwiML
    (Twilio plays its own error on a 500), and nothing kept, so Twilio's retry gets another chance."""
    number = "+15551230004"
    lookup = FakeLookup({number: make_agent(number)})
    calls = FakeCalls()
    form = twilio_form(number)

    lookup.down, calls.down = broken == "registry", broken == "store"
    down = await answer(form, lookup, calls)
    lookup.down = calls.down = False
    retried = await answer(form, lookup, calls)

    assert down.outcome is outcome
    assert said(down.twiml) == twiml.UNAVAILABLE_MESSAGE
    assert retried.outcome is Outcome.CONNECTED
    assert len(calls.outbox) == 1


async def test_store_down_still_answers_a_failed_call_callback() -> None:
    number = "+15551230009"
    calls = FakeCalls()
    form = twilio_form(number)
    await answer(form, FakeLookup({number: make_agent(number)}), calls)
    calls.down = True

    reply, ended = await service.handle_status(
        {**form, "CallStatus": "in-progress", "DialCallStatus": "busy"}, calls=calls
    )

    assert not ended
    assert said(reply) == twiml.DIAL_FAILED_MESSAGE


async def test_a_store_that_never_answers_is_treated_as_down_after_the_deadline() -> None:
    number = "+15551230010"
    calls = FakeCalls()
    form = twilio_form(number)
    calls.silent = True

    async with asyncio.timeout(10):  # a no-hang check: the deadline below is 0.05 s
        down = await service.answer_incoming(
            form,
            lookup=FakeLookup({number: make_agent(number)}),
            calls=calls,
            target=TARGET,
            ttl=TTL,
            store_deadline=0.05,
        )

    assert down.outcome is Outcome.STORE_UNAVAILABLE
    assert said(down.twiml) == twiml.UNAVAILABLE_MESSAGE
    assert calls.answers == {}


async def test_a_store_that_never_answers_still_lets_a_failed_call_callback_answer() -> None:
    number = "+15551230011"
    calls = FakeCalls()
    form = twilio_form(number)
    await answer(form, FakeLookup({number: make_agent(number)}), calls)
    calls.silent = True

    async with asyncio.timeout(10):
        reply, ended = await service.handle_status(
            {**form, "CallStatus": "in-progress", "DialCallStatus": "busy"}, calls=calls, store_deadline=0.05
        )

    assert not ended
    assert said(reply) == twiml.DIAL_FAILED_MESSAGE


async def test_a_bad_form_still_gets_twiml() -> None:
    result = await answer({"CallSid": "CA1", "To": "not-a-number"}, FakeLookup({}), FakeCalls())

    assert result.outcome is Outcome.BAD_REQUEST
    assert said(result.twiml) == twiml.BAD_REQUEST_MESSAGE


@pytest.mark.parametrize("status", ["busy", "failed", "no-answer", "canceled"])
async def test_a_call_that_never_reached_its_agent_ends_its_session_once(status: str) -> None:
    number = "+15551230005"
    agent = make_agent(number)
    calls = FakeCalls()
    form = twilio_form(number)
    await answer(form, FakeLookup({number: agent}), calls)
    callback = {**form, "CallStatus": status}

    _, ended = await service.handle_status(callback, calls=calls)
    _, ended_again = await service.handle_status(callback, calls=calls)

    assert (ended, ended_again) == (True, False)
    event = calls.outbox[-1]
    assert isinstance(event, SessionEnded)
    assert event.session_id == phone_session_id(form["CallSid"])
    assert event.agent_id == agent.id
    assert event.data.reason == "call_failed"
    assert event.data.detail == f"twilio call status: {status}"


async def test_completed_and_unknown_calls_end_nothing() -> None:
    number = "+15551230006"
    calls = FakeCalls()
    form = twilio_form(number)
    await answer(form, FakeLookup({number: make_agent(number)}), calls)

    reply, ended = await service.handle_status({**form, "CallStatus": "completed"}, calls=calls)
    _, ended_unknown = await service.handle_status(
        {"CallSid": "CA" + uuid.uuid4().hex, "CallStatus": "failed"}, calls=calls
    )

    assert (ended, ended_unknown) == (False, False)
    assert list(parse_twiml(reply)) == []
    assert len(calls.outbox) == 1


async def test_a_failed_bridge_tells_the_caller_and_ends_the_session() -> None:
    number = "+15551230007"
    calls = FakeCalls()
    form = twilio_form(number)
    await answer(form, FakeLookup({number: make_agent(number)}), calls)

    reply, ended = await service.handle_status(
        {**form, "CallStatus": "in-progress", "DialCallStatus": "failed"}, calls=calls
    )
    finished, _ = await service.handle_status(
        {**form, "CallStatus": "in-progress", "DialCallStatus": "completed"}, calls=calls
    )

    assert ended
    assert said(reply) == twiml.DIAL_FAILED_MESSAGE
    assert [child.tag for child in parse_twiml(finished)] == ["Hangup"]
