"""Pure logic of the registry: folding session events in any order, agent updates, look-up answers."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from agentline_common.events import (
    Event,
    PhoneCall,
    SessionEnded,
    SessionEndedData,
    SessionRequested,
    SessionRequestedData,
    SessionStarted,
    SessionStartedData,
    TranscriptEntry,
    TurnMetrics,
)
from agentline_common.rooms import new_test_room
from agentline_registry.app import integrity_detail
from agentline_registry.schemas import AgentCreate, AgentUpdate
from agentline_registry.service import (
    SessionRecord,
    agent_config,
    apply_update,
    merge_session_event,
    new_session_record,
    session_read,
)
from agentline_registry.tables import Agent, CallSession
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _events(session_id: uuid.UUID, agent_id: uuid.UUID, org_id: uuid.UUID) -> list[Event]:
    room = new_test_room(agent_id).name
    common = {"session_id": session_id, "agent_id": agent_id, "org_id": org_id}
    return [
        SessionRequested(
            occurred_at=T0,
            data=SessionRequestedData(kind="test", room_name=room, expires_at=T0 + timedelta(minutes=10)),
            **common,
        ),
        SessionStarted(
            occurred_at=T0 + timedelta(seconds=2),
            data=SessionStartedData(room_name=room, worker="worker-1", job="job-1"),
            **common,
        ),
        SessionEnded(
            occurred_at=T0 + timedelta(seconds=60),
            data=SessionEndedData(
                reason="user_hangup",
                room_name=room,
                duration_seconds=58.0,
                transcript=[TranscriptEntry(role="agent", text="Hello", at=T0 + timedelta(seconds=3))],
                turns=[TurnMetrics(latency_ms=420.0)],
            ),
            **common,
        ),
    ]


def _fold(events: list[Event]) -> SessionRecord:
    assert events[0].session_id is not None
    row = new_session_record(events[0].session_id)
    for event in events:
        merge_session_event(row, event)
    return row


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_order_of_events_gives_the_same_log_row(order: tuple[int, int, int]) -> None:
    events = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    row = _fold([events[i] for i in order])
    assert row["status"] == "ended"
    assert row["kind"] == "test"
    assert row["requested_at"] == T0
    assert row["started_at"] == T0 + timedelta(seconds=2)
    assert row["ended_at"] == T0 + timedelta(seconds=60)
    assert row["end_reason"] == "user_hangup"
    assert row["duration_seconds"] == 58.0
    assert row["transcript"][0]["text"] == "Hello"
    assert row["turns"] == [{"latency_ms": 420.0, "stt_ms": None, "llm_ttft_ms": None, "tts_ttfb_ms": None}]
    assert row["worker"] == "worker-1"


def test_a_duplicate_event_changes_nothing() -> None:
    events = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    once = _fold(events)
    twice = _fold([*events, *events])
    fields = ("status", "requested_at", "started_at", "ended_at", "end_reason", "transcript", "turns")
    assert {f: once[f] for f in fields} == {f: twice[f] for f in fields}


def _livekit_closed_the_room(ended: SessionEnded, *, after: timedelta) -> SessionEnded:
    """The token-service's backstop for the same session: LiveKit's room_finished webhook."""
    return SessionEnded(
        session_id=ended.session_id,
        agent_id=ended.agent_id,
        org_id=ended.org_id,
        occurred_at=ended.occurred_at + after,
        data=SessionEndedData(reason="room_finished", detail="LiveKit closed the room", room_name="r"),
    )


@pytest.mark.parametrize("backstop_first", [False, True])
def test_the_workers_end_outweighs_livekit_closing_the_room(backstop_first: bool) -> None:
    """Every test call gets both: the worker's end, and LiveKit's room_finished some 20 s later."""
    *_, ended = events = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    backstop = _livekit_closed_the_room(ended, after=timedelta(seconds=20))
    row = _fold([*events[:2], backstop, ended] if backstop_first else [*events, backstop])
    assert (row["end_reason"], row["end_detail"], row["status"]) == ("user_hangup", None, "ended")
    assert row["ended_at"] == T0 + timedelta(seconds=60)
    assert row["duration_seconds"] == 58.0
    assert row["transcript"][0]["text"] == "Hello"


def test_of_two_ends_saying_as_much_the_first_stands_and_the_second_fills_in() -> None:
    *_, ended = events = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    workers_room_finished = ended.model_copy(
        update={"data": ended.data.model_copy(update={"reason": "room_finished"})}
    )
    backstop = _livekit_closed_the_room(ended, after=timedelta(seconds=-5))
    row = _fold([*events[:2], backstop, workers_room_finished])
    assert (row["end_reason"], row["end_detail"]) == ("room_finished", "LiveKit closed the room")
    assert row["ended_at"] == T0 + timedelta(seconds=55)
    assert row["duration_seconds"] == 58.0
    assert row["transcript"][0]["text"] == "Hello"


def test_an_end_replaces_an_expiry_guess() -> None:
    requested, _, ended = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    row = _fold([requested])
    row.update(status="expired", end_reason="expired", ended_at=T0 + timedelta(minutes=11))
    merge_session_event(row, ended)
    assert (row["status"], row["end_reason"]) == ("ended", "user_hangup")
    assert row["ended_at"] == T0 + timedelta(seconds=60)


def test_requested_after_started_keeps_active() -> None:
    requested, started, _ = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    row = _fold([started, requested])
    assert row["status"] == "active"
    assert row["expires_at"] == T0 + timedelta(minutes=10)


def test_started_after_an_expiry_guess_revives_the_session() -> None:
    requested, started, _ = _events(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    row = _fold([requested])
    row["status"] = "expired"
    merge_session_event(row, started)
    assert row["status"] == "active"


@pytest.mark.parametrize("reason", ["error", "agent_unavailable", "call_failed"])
def test_failure_reasons_mark_the_session_failed(reason: str) -> None:
    session_id = uuid.uuid4()
    ended = SessionEnded(session_id=session_id, data=SessionEndedData.model_validate({"reason": reason}))
    row = _fold([ended])
    assert row["status"] == "failed"
    assert row["end_reason"] == reason


def test_phone_session_takes_numbers_and_kind_from_the_call() -> None:
    session_id = uuid.uuid4()
    requested = SessionRequested(
        session_id=session_id,
        data=SessionRequestedData(
            kind="phone",
            room_name="call_+14155550100_abcdefghijkm",
            call=PhoneCall(sid="CA123", from_number="+14155550199", to_number="+14155550100"),
            expires_at=T0,
        ),
    )
    row = _fold([requested])
    assert (row["kind"], row["call_sid"], row["from_number"], row["to_number"]) == (
        "phone",
        "CA123",
        "+14155550199",
        "+14155550100",
    )


def test_kind_is_inferred_from_the_room_when_requested_is_missing() -> None:
    session_id = uuid.uuid4()
    started = SessionStarted(
        session_id=session_id,
        data=SessionStartedData(room_name="call_+14155550100_abcdefghijkm", worker="w", job="j"),
    )
    assert _fold([started])["kind"] == "phone"


def _agent() -> Agent:
    spec = AgentCreate(name="A", instructions="Be nice", first_message="Hi")
    return Agent(org_id=uuid.uuid4(), tools=[], **spec.model_dump(exclude={"tools"}))


def test_apply_update_reports_only_changed_fields() -> None:
    agent = _agent()
    before = agent.updated_at
    later = before + timedelta(seconds=5)
    changed = apply_update(agent, AgentUpdate(name="A", temperature=0.2), now=later)
    assert changed == ["temperature"]
    assert agent.updated_at == later
    assert apply_update(agent, AgentUpdate(temperature=0.2), now=later + timedelta(1)) == []
    assert agent.updated_at == later


def test_agent_update_refuses_null_and_unknown_fields() -> None:
    with pytest.raises(ValidationError) as null:
        AgentUpdate.model_validate({"name": None})
    assert null.value.errors()[0]["loc"] == ("name",)
    with pytest.raises(ValidationError) as unknown:
        AgentUpdate.model_validate({"colour": "blue"})
    assert unknown.value.errors()[0]["loc"] == ("colour",)


def test_tool_names_must_be_unique() -> None:
    tool = {"name": "lookup", "description": "d", "url": "http://127.0.0.1:9/x"}
    with pytest.raises(ValidationError) as error:
        AgentCreate.model_validate({"name": "A", "tools": [tool, tool]})
    assert "lookup" in str(error.value)


def test_agent_config_is_the_lookup_contract() -> None:
    agent = _agent()
    agent.tools = [{"name": "lookup", "description": "d", "url": "http://127.0.0.1:9/x"}]
    config = agent_config(agent, ["+14155550100"])
    assert config.id == agent.id
    assert config.org_id == agent.org_id
    assert config.tools[0].name == "lookup"
    assert config.phone_numbers == ["+14155550100"]


@pytest.mark.parametrize(
    ("driver_message", "says"),
    [
        ("FOREIGN KEY constraint failed", "deleted meanwhile"),
        ('insert or update on table "memberships" violates foreign key constraint "fk"', "deleted meanwhile"),
        ("UNIQUE constraint failed: agents.name", "conflicts with a concurrent one"),
    ],
)
def test_an_integrity_error_says_which_kind_of_conflict_it_was(driver_message: str, says: str) -> None:
    error = IntegrityError("INSERT ...", {}, Exception(driver_message))
    assert says in integrity_detail(error)


@pytest.mark.parametrize(
    ("reason", "detail", "shown"),
    [
        ("agent_unavailable", "the registry did not answer", "the registry did not answer"),
        ("error", "ConnectError: http://10.0.0.5:8000", None),
    ],
)
def test_users_see_why_a_call_ended_but_not_an_errors_internals(
    reason: str, detail: str, shown: str | None
) -> None:
    row = CallSession(id=uuid.uuid4(), status="failed", end_reason=reason, end_detail=detail)
    assert session_read(row).end_detail == shown
