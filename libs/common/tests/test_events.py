import uuid
from datetime import UTC, datetime, timedelta

import pytest
from agentline_common.events import (
    AgentChanged,
    AgentChangedData,
    PhoneCall,
    SessionEnded,
    SessionEndedData,
    SessionRequested,
    SessionRequestedData,
    encode_event,
    parse_event,
    phone_session_id,
)
from pydantic import ValidationError

pytestmark = pytest.mark.unit


def test_session_requested_round_trips_with_call_aliases() -> None:
    event = SessionRequested(
        org_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        data=SessionRequestedData(
            kind="phone",
            room_name="call_+15551234567",
            call=PhoneCall(sid="CA123", from_number="+15550000000", to_number="+15551234567"),
            expires_at=datetime.now(UTC) + timedelta(minutes=10),
        ),
    )
    body = encode_event(event)
    assert b'"from":"+15550000000"' in body
    assert b'"type":"session.requested"' in body
    assert parse_event(body) == event


def test_parse_picks_the_type_by_discriminator() -> None:
    event = AgentChanged(agent_id=uuid.uuid4(), data=AgentChangedData(change="deleted"))
    parsed = parse_event(encode_event(event))
    assert isinstance(parsed, AgentChanged)
    assert parsed.data.change == "deleted"


def test_unknown_type_and_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_event(b'{"type": "session.exploded", "data": {}}')
    event = SessionEnded(data=SessionEndedData(reason="completed"))
    body = encode_event(event).replace(b"+00:00", b"").replace(b'Z"', b'"')
    with pytest.raises(ValidationError):
        parse_event(body)


def test_unknown_end_reason_is_rejected() -> None:
    with pytest.raises(ValidationError):
        SessionEndedData(reason="because")  # type: ignore[arg-type]


def test_phone_session_id_is_stable_per_call() -> None:
    assert phone_session_id("CA1") == phone_session_id("CA1")
    assert phone_session_id("CA1") != phone_session_id("CA2")
