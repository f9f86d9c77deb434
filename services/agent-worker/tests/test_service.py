"""Unit tests of the worker's decisions: planning a job, signing and validating tool calls, naming
how a session ended."""

from __future__ import annotations

import json
import time
import uuid
from ipaddress import ip_address, ip_network

import pytest
from agentline_common.agents import AgentConfig, WebhookTool
from agentline_common.events import CALL_SID_ATTRIBUTE, SESSION_NAMESPACE, phone_session_id
from agentline_common.rooms import new_test_room
from agentline_worker.service import (
    SIGNATURE_HEADER,
    SIP_CALLER_NUMBER,
    SIP_TRUNK_NUMBER,
    TIMESTAMP_HEADER,
    PhoneCallPlan,
    PlanError,
    TestCallPlan,
    accepts_room,
    argument_errors,
    correlation_id_for,
    destination_refusal,
    dispatch_timeline,
    end_reason,
    ended_event,
    plan_session,
    refusal,
    session_id_for,
    signature,
    transcript_entry,
    turn_metrics,
    verify_signature,
    webhook_request,
)
from agentline_worker.settings import WorkerSettings
from pydantic import ValidationError

pytestmark = pytest.mark.unit

NUMBER = "+14155550123"
PHONE_ROOM = f"call_{NUMBER}_Ab3dEfGhJkMn"


def agent(**overrides: object) -> AgentConfig:
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "org_id": uuid.uuid4(),
        "name": "a",
        "active": True,
        "instructions": "i",
        "first_message": "hi",
        "phone_numbers": [NUMBER],
        **overrides,
    }
    return AgentConfig.model_validate(fields)


# planning


def test_a_test_room_plans_the_agent_and_session_of_its_metadata() -> None:
    room = new_test_room(uuid.uuid4())
    session_id = uuid.uuid4()
    metadata = json.dumps({"agent_id": str(room.agent_id), "session_id": str(session_id)})
    plan = plan_session(room_name=room.name, metadata=metadata)
    assert plan == TestCallPlan(room_name=room.name, agent_id=room.agent_id)
    assert session_id_for(room.name, metadata) == session_id


def test_a_test_room_without_metadata_gets_a_stable_session_id() -> None:
    room = new_test_room(uuid.uuid4())
    assert session_id_for(room.name, "") == uuid.uuid5(SESSION_NAMESPACE, room.name)
    assert session_id_for(room.name, "not json") == session_id_for(room.name, "")


def test_metadata_naming_another_agent_is_refused() -> None:
    room = new_test_room(uuid.uuid4())
    metadata = json.dumps({"agent_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4())})
    with pytest.raises(PlanError, match="another agent"):
        plan_session(room_name=room.name, metadata=metadata)


@pytest.mark.parametrize("metadata", ["{", "[1]"])
def test_unreadable_metadata_is_refused(metadata: str) -> None:
    with pytest.raises(PlanError, match="metadata"):
        plan_session(room_name=new_test_room(uuid.uuid4()).name, metadata=metadata)


def test_a_phone_room_plans_by_number_and_call_sid() -> None:
    attributes = {SIP_TRUNK_NUMBER: NUMBER, CALL_SID_ATTRIBUTE: "CA123", SIP_CALLER_NUMBER: "+447700900123"}
    plan = plan_session(room_name=PHONE_ROOM, metadata="", attributes=attributes)
    assert plan == PhoneCallPlan(
        room_name=PHONE_ROOM, number=NUMBER, call_sid="CA123", caller_number="+447700900123"
    )
    assert session_id_for(PHONE_ROOM, "", attributes) == phone_session_id("CA123")


def test_a_phone_room_without_call_sid_falls_back_to_the_room() -> None:
    session_id = session_id_for(PHONE_ROOM, "", {SIP_TRUNK_NUMBER: NUMBER})
    assert session_id == uuid.uuid5(SESSION_NAMESPACE, PHONE_ROOM)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [({}, "no sip.trunkPhoneNumber"), ({SIP_TRUNK_NUMBER: "+14155550999"}, "does not match")],
)
def test_a_phone_room_must_match_the_trunk_number(attributes: dict[str, str], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_session(room_name=PHONE_ROOM, metadata="", attributes=attributes)


@pytest.mark.parametrize("name", ["", "lobby", "test_x_y", f"call_{NUMBER}_short", "x" * 200])
def test_foreign_rooms_are_not_ours(name: str) -> None:
    assert not accepts_room(name)
    with pytest.raises(PlanError):
        plan_session(room_name=name, metadata="")


def test_our_rooms_are_accepted() -> None:
    assert accepts_room(new_test_room(uuid.uuid4()).name)
    assert accepts_room(PHONE_ROOM)


def test_refusals() -> None:
    active = agent()
    test_plan = TestCallPlan(room_name="r", agent_id=active.id)
    phone_plan = PhoneCallPlan(room_name="r", number=NUMBER)
    assert refusal(active, test_plan) is None
    assert refusal(active, phone_plan) is None
    assert refusal(agent(active=False), phone_plan) == "the agent is inactive"
    assert refusal(agent(phone_numbers=[]), phone_plan) == "the number is no longer bound to this agent"
    other = TestCallPlan(room_name="r", agent_id=uuid.uuid4())
    assert refusal(active, other) == "the registry answered for another agent"


# webhook tools

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
    "required": ["order_id"],
    "additionalProperties": False,
}


def test_valid_arguments_pass() -> None:
    assert argument_errors(SCHEMA, {"order_id": "A", "count": 2}) is None


def test_invalid_arguments_name_each_field() -> None:
    problems = argument_errors(SCHEMA, {"count": 0, "extra": True})
    assert problems is not None
    assert "'order_id' is a required property" in problems
    assert "count: 0 is less than the minimum of 1" in problems
    assert "'extra' was unexpected" in problems


def test_formats_are_checked() -> None:
    schema = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}
    assert argument_errors(schema, {"day": "2026-11-27"}) is None
    problems = argument_errors(schema, {"day": "tomorrow"})
    assert problems == "day: 'tomorrow' is not a 'date'"


def test_a_backtracking_pattern_is_checked_in_linear_time() -> None:
    """With Python's `re`, this check would take longer than the universe has existed."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(b+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    problems = argument_errors(schema, {"name": "a" * 64 + "!", "b" * 64 + "!": 1})
    assert problems is not None
    assert f"name: '{'a' * 64}!' does not match '^(a+)+$'" in problems
    assert f"'{'b' * 64}!' was unexpected" in problems
    assert argument_errors(schema, {"name": "a" * 64, "b" * 64: 1}) is None
    assert argument_errors(schema, {"b" * 64: "one"}) == f"{'b' * 64}: 'one' is not of type 'integer'"


def test_a_pattern_the_linear_time_engine_cannot_run_is_reported_not_run() -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(?!0)[0-9]+$"}}}
    problems = argument_errors(schema, {"code": "12"})
    assert problems is not None and "cannot be checked" in problems


def test_a_stored_schema_with_unevaluated_properties_beside_pattern_properties_is_reported_not_run() -> None:
    """jsonschema matches patternProperties with Python's `re` for unevaluatedProperties: run, 40
    characters of "b" would freeze the worker."""
    schema = {"type": "object", "patternProperties": {"^(b+)+$": {}}, "unevaluatedProperties": False}
    problems = argument_errors(schema, {"b" * 40 + "!": 1})
    assert problems is not None and "cannot be checked" in problems


def tool(**overrides: object) -> WebhookTool:
    fields: dict[str, object] = {
        "name": "lookup",
        "description": "d",
        "parameters": SCHEMA,
        "url": "http://127.0.0.1:9/hook",
        "secret_ref": "s",
        **overrides,
    }
    return WebhookTool.model_validate(fields)


def test_a_post_request_is_signed_over_its_exact_body() -> None:
    secret, agent_id, session_id = b"k" * 32, uuid.uuid4(), uuid.uuid4()
    request = webhook_request(
        tool(),
        {"order_id": "A"},
        secret=secret,
        timestamp=1700000000,
        session_id=session_id,
        agent_id=agent_id,
    )
    assert request.method == "POST" and request.url == "http://127.0.0.1:9/hook"
    assert request.body == b'{"order_id":"A"}'
    assert request.headers[TIMESTAMP_HEADER] == "1700000000"
    assert request.headers[SIGNATURE_HEADER] == signature(secret, timestamp=1700000000, payload=request.body)
    assert request.headers[SIGNATURE_HEADER].startswith("v1=")
    assert request.headers["X-Agentline-Session-Id"] == str(session_id)
    assert request.headers["X-Agentline-Agent-Id"] == str(agent_id)


def test_a_get_request_signs_its_query_string() -> None:
    request = webhook_request(
        tool(method="GET"),
        {"order_id": "A B"},
        secret=b"k" * 32,
        timestamp=5,
        session_id=None,
        agent_id=uuid.uuid4(),
    )
    assert request.body is None
    assert request.url == "http://127.0.0.1:9/hook?order_id=A+B"
    assert request.headers[SIGNATURE_HEADER] == signature(b"k" * 32, timestamp=5, payload=b"order_id=A+B")


def test_a_get_request_signs_its_whole_query_as_sent() -> None:
    """The tool URL's own query is signed too, and the URL is the signed bytes, percent-encoded:
    `/`, `:`, `&` and `=` in an argument stay encoded, so the receiver parses what was signed."""
    request = webhook_request(
        tool(method="GET", url="http://127.0.0.1:9/hook?tenant=acme#part"),
        {"path": "a/b:c&d=e", "count": 2},
        secret=b"k" * 32,
        timestamp=5,
        session_id=None,
        agent_id=uuid.uuid4(),
    )
    query = "tenant=acme&path=a%2Fb%3Ac%26d%3De&count=2"
    assert request.url == f"http://127.0.0.1:9/hook?{query}"
    assert request.headers[SIGNATURE_HEADER] == signature(b"k" * 32, timestamp=5, payload=query.encode())


def test_without_a_secret_nothing_is_signed() -> None:
    request = webhook_request(
        tool(secret_ref=None),
        {"order_id": "A"},
        secret=None,
        timestamp=5,
        session_id=None,
        agent_id=uuid.uuid4(),
    )
    assert SIGNATURE_HEADER not in request.headers and TIMESTAMP_HEADER not in request.headers


def test_verify_signature_rejects_tampering_and_stale_timestamps() -> None:
    secret, now = b"s" * 32, time.time()
    header = signature(secret, timestamp=int(now), payload=b"{}")
    assert verify_signature(secret, timestamp=str(int(now)), payload=b"{}", header=header, now=now)
    assert not verify_signature(secret, timestamp=str(int(now)), payload=b"{ }", header=header, now=now)
    assert not verify_signature(b"t" * 32, timestamp=str(int(now)), payload=b"{}", header=header, now=now)
    assert not verify_signature(secret, timestamp=str(int(now)), payload=b"{}", header=header, now=now + 301)
    assert not verify_signature(secret, timestamp="soon", payload=b"{}", header=header, now=now)


# transcript, metrics, end reasons


def test_transcript_entries() -> None:
    entry = transcript_entry(role="assistant", text=" Hello ", created_at=0)
    assert entry is not None and (entry.role, entry.text) == ("agent", "Hello")
    assert transcript_entry(role="user", text="hi", created_at=0) is not None
    assert transcript_entry(role="system", text="x", created_at=0) is None
    assert transcript_entry(role="user", text="  ", created_at=0) is None


def test_turn_metrics_in_milliseconds() -> None:
    turn = turn_metrics(
        {"e2e_latency": 0.8125, "llm_node_ttft": 0.1, "tts_node_ttfb": 0.05},
        {"transcription_delay": 0.2},
    )
    assert turn is not None
    assert (turn.latency_ms, turn.stt_ms, turn.llm_ttft_ms, turn.tts_ttfb_ms) == (812.5, 200.0, 100.0, 50.0)
    assert turn_metrics({"llm_node_ttft": 0.1}, None) is None  # the greeting is not a turn


@pytest.mark.parametrize(
    ("close_reason", "ended_by_tool", "room_gone", "expected"),
    [
        ("user_initiated", True, False, "end_call"),
        ("participant_disconnected", False, False, "user_hangup"),
        ("error", False, False, "error"),
        ("user_initiated", False, True, "room_finished"),
        ("user_initiated", False, False, "worker_shutdown"),
        ("job_shutdown", False, False, "worker_shutdown"),
        ("task_completed", False, False, "completed"),
    ],
)
def test_end_reasons(close_reason: str, ended_by_tool: bool, room_gone: bool, expected: str) -> None:
    assert end_reason(close_reason, ended_by_tool=ended_by_tool, room_gone=room_gone) == expected


def test_a_refusal_event_names_the_agent_without_its_config() -> None:
    agent_id, session_id = uuid.uuid4(), uuid.uuid4()
    event = ended_event(
        session_id=session_id, room_name="r", reason="agent_unavailable", agent_id=agent_id, detail="x" * 900
    )
    assert (event.agent_id, event.org_id, event.session_id) == (agent_id, None, session_id)
    assert event.data.reason == "agent_unavailable" and len(event.data.detail or "") == 500


@pytest.mark.unit
def test_correlation_id_comes_from_the_dispatch_or_the_session() -> None:
    session_id = uuid.uuid4()
    carried = json.dumps({"agent_id": str(uuid.uuid4()), "correlation_id": "req-42"})
    assert correlation_id_for(carried, session_id) == "req-42"
    assert correlation_id_for("", session_id) == session_id.hex
    assert correlation_id_for("not json", session_id) == session_id.hex
    assert correlation_id_for(json.dumps({"correlation_id": "x" * 500}), session_id) == session_id.hex


def test_the_dispatch_timeline_names_each_step_in_ms() -> None:
    timeline = dispatch_timeline(
        received_at=100.0,
        accepted_at=100.01,
        assigned_at=100.05,
        launched_at=100.06,
        entered_at=100.08,
        joined_at=100.38,
    )
    assert timeline == {
        "accept_ms": 10.0,
        "assign_ms": 40.0,
        "launch_ms": 10.0,
        "entrypoint_ms": 20.0,
        "connect_ms": 300.0,
        "dispatch_ms": 380.0,
    }


def test_the_dispatch_timeline_leaves_out_steps_with_unknown_times() -> None:
    """A resumed job has no request timestamps: no step is reported as decades long."""
    timeline = dispatch_timeline(
        received_at=0.0, accepted_at=0.0, assigned_at=0.0, launched_at=0.0, entered_at=5.0, joined_at=5.25
    )
    assert timeline == {"connect_ms": 250.0}


@pytest.mark.parametrize(
    "address",
    [
        *("127.0.0.1", "10.1.2.3", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0"),
        *("::1", "fe80::1", "fd00::1"),
    ],
)
def test_tools_may_not_call_non_public_addresses(address: str) -> None:
    refusal = destination_refusal(ip_address(address), allowed=[])
    assert refusal is not None and "TOOL_ALLOWED_NETWORKS" in refusal


def test_tools_may_call_public_addresses_and_networks_the_operator_allowed() -> None:
    assert destination_refusal(ip_address("93.184.216.34"), allowed=[]) is None
    assert destination_refusal(ip_address("2606:2800:220:1::1"), allowed=[]) is None
    assert destination_refusal(ip_address("10.20.3.4"), allowed=[ip_network("10.20.0.0/16")]) is None
    assert destination_refusal(ip_address("10.21.3.4"), allowed=[ip_network("10.20.0.0/16")]) is not None


def test_the_old_flat_tool_secrets_are_refused_naming_the_new_form_and_not_the_secret() -> None:
    with pytest.raises(ValidationError) as refused:
        WorkerSettings(tool_secrets={"orders": "s3cret-signing-key"})
    assert "per organisation" in str(refused.value)
    assert "s3cret-signing-key" not in str(refused.value)
    org = uuid.uuid4()
    kept = WorkerSettings(tool_secrets={str(org): {"orders": "s3cret-signing-key"}}).tool_secrets
    assert kept[org]["orders"].get_secret_value() == "s3cret-signing-key"
