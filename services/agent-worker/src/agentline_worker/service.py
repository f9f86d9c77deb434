"""The worker's decisions, as plain functions: which call a job is, how a webhook is signed, what the
model is told, how a session's end is named. Nothing here does I/O, so all of it is unit-tested.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any
from urllib.parse import urlencode

from agentline_common.agents import (
    AgentConfig,
    UncheckableSchema,
    WebhookTool,
    check_linear_time,
    linear_time_pattern,
)
from agentline_common.events import (
    CALL_SID_ATTRIBUTE,
    SESSION_NAMESPACE,
    EndReason,
    SessionEnded,
    SessionEndedData,
    SessionStarted,
    SessionStartedData,
    TranscriptEntry,
    TurnMetrics,
    phone_session_id,
)
from agentline_common.rooms import InvalidRoomName, PhoneRoom, TestRoom, parse_room_name
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for

SIP_TRUNK_NUMBER = "sip.trunkPhoneNumber"
SIP_CALLER_NUMBER = "sip.phoneNumber"

TIMESTAMP_HEADER = "X-Agentline-Timestamp"
SIGNATURE_HEADER = "X-Agentline-Signature"
SIGNATURE_VERSION = "v1"
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_TOOL_RESULT_CHARS = 4000
MAX_TOOL_RESPONSE_BYTES = 4 * MAX_TOOL_RESULT_CHARS
"""How much of a webhook's answer is read: UTF-8 takes at most 4 bytes a character, so no answer that
`MAX_TOOL_RESULT_CHARS` would keep is cut shorter."""
TOOL_RESULT_CUT_NOTE = "\n[The tool's answer was longer and was cut here.]"


class PlanError(ValueError):
    """The job cannot become a call: the message says why (it ends up in `session.ended`)."""


@dataclass(frozen=True)
class TestCallPlan:
    """A browser test call: the agent by id. (Its session id is `session_id_for`'s.)"""

    __test__ = False  # not a pytest test class

    room_name: str
    agent_id: uuid.UUID


@dataclass(frozen=True)
class PhoneCallPlan:
    """A phone call: the agent by the dialled number. (Its session id is `session_id_for`'s.)"""

    room_name: str
    number: str
    call_sid: str | None = None
    caller_number: str | None = None


SessionPlan = TestCallPlan | PhoneCallPlan


def accepts_room(room_name: str) -> bool:
    """Whether a dispatch for `room_name` is ours at all: only rooms named by our convention."""
    try:
        parse_room_name(room_name)
    except InvalidRoomName:
        return False
    return True


def fallback_session_id(room_name: str) -> uuid.UUID:
    """The session id when nobody told us one: stable per room, so every writer agrees on it."""
    return uuid.uuid5(SESSION_NAMESPACE, room_name)


def session_id_for(room_name: str, metadata: str, attributes: Mapping[str, str] | None = None) -> uuid.UUID:
    """The session id of a job: the caller's CallSid for phone calls, else the dispatch metadata's
    `session_id`, else derived from the room name.

    The one place a job's session id comes from: the job computes it before the call is planned
    (so that a refusal is reported on the right session too) and again once the caller is known.
    """
    call_sid = (attributes or {}).get(CALL_SID_ATTRIBUTE)
    if call_sid:
        return phone_session_id(call_sid)
    try:
        body = json.loads(metadata) if metadata else {}
        return uuid.UUID(str(body["session_id"]))
    except (ValueError, KeyError, TypeError):
        return fallback_session_id(room_name)


def correlation_id_for(metadata: str, session_id: uuid.UUID) -> str:
    """The id that ties this call's logs to the request that started it.

    A test call's dispatch metadata carries the token request's correlation id; a phone call (or a
    dispatch without one) uses the session id, which the gateway and the registry also log.
    """
    try:
        body = json.loads(metadata) if metadata else {}
        given = body.get("correlation_id") if isinstance(body, dict) else None
    except ValueError:
        given = None
    if isinstance(given, str) and 0 < len(given) <= 128:
        return given
    return session_id.hex


def plan_session(
    *, room_name: str, metadata: str, attributes: Mapping[str, str] | None = None
) -> SessionPlan:
    """Turn a dispatch (room name, job metadata, the caller's participant attributes) into a plan.

    Test rooms name their agent in the room and in the metadata (`{"agent_id", "session_id"}`); the
    two must agree. Phone rooms name the dialled number; the SIP participant's trunk number must be
    that same number, so a room cannot be named to reach another organisation's agent.
    """
    try:
        room = parse_room_name(room_name)
    except InvalidRoomName as error:
        raise PlanError(str(error)) from error
    if isinstance(room, TestRoom):
        return _plan_test_call(room, metadata)
    return _plan_phone_call(room, attributes or {})


def _plan_test_call(room: TestRoom, metadata: str) -> TestCallPlan:
    try:
        body = json.loads(metadata) if metadata else {}
    except ValueError as error:
        raise PlanError("the dispatch metadata is not JSON") from error
    if not isinstance(body, dict):
        raise PlanError("the dispatch metadata must be a JSON object")
    named = body.get("agent_id")
    if named is not None and str(named).lower() != str(room.agent_id):
        raise PlanError("the dispatch metadata names another agent than the room")
    return TestCallPlan(room_name=room.name, agent_id=room.agent_id)


def _plan_phone_call(room: PhoneRoom, attributes: Mapping[str, str]) -> PhoneCallPlan:
    trunk_number = attributes.get(SIP_TRUNK_NUMBER)
    if trunk_number is None:
        raise PlanError(f"the caller has no {SIP_TRUNK_NUMBER} attribute to check the number with")
    if trunk_number != room.number:
        raise PlanError("the SIP trunk number does not match the number in the room name")
    call_sid = attributes.get(CALL_SID_ATTRIBUTE) or None
    return PhoneCallPlan(
        room_name=room.name,
        number=room.number,
        call_sid=call_sid,
        caller_number=attributes.get(SIP_CALLER_NUMBER) or None,
    )


def refusal(agent: AgentConfig, plan: SessionPlan) -> str | None:
    """Why `agent` must not take this call, or None when it may."""
    if not agent.active:
        return "the agent is inactive"
    if isinstance(plan, PhoneCallPlan) and plan.number not in agent.phone_numbers:
        return "the number is no longer bound to this agent"
    if isinstance(plan, TestCallPlan) and agent.id != plan.agent_id:
        return "the registry answered for another agent"
    return None


# webhook tools


def argument_errors(schema: Mapping[str, Any], arguments: Any) -> str | None:
    """A message naming every argument that breaks the tool's JSON schema, or None when valid.

    Formats are checked (``"format": "date"`` refuses "tomorrow"). Patterns are matched by RE2, in
    time linear in the argument: Python's `re` backtracks, holding the GIL meanwhile, so a schema's
    ``^(a+)+$`` against 40 characters the model was talked into sending froze every call of the
    worker for minutes. A schema that cannot be checked so (`check_linear_time`: the registry refuses
    new ones, but one stored before may remain) is reported instead of being run by `re`.
    """
    try:
        check_linear_time(dict(schema))
    except UncheckableSchema as error:
        return f"the tool's schema cannot be checked: {error}"
    validator_class = _with_linear_time_patterns(validator_for(schema))
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    problems = sorted(validator.iter_errors(arguments), key=lambda error: list(error.path))
    if not problems:
        return None
    described = []
    for problem in problems[:5]:
        where = "/".join(str(part) for part in problem.path) or "(arguments)"
        described.append(f"{where}: {problem.message}")
    return "; ".join(described)


@cache
def _with_linear_time_patterns(validator_class: type[Validator]) -> type[Validator]:
    """`validator_class` with every keyword that matches the arguments against a pattern on RE2."""
    extended: type[Validator] = extend(
        validator_class,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        },
    )
    return extended


def _matches(pattern: str, text: str) -> bool:
    return linear_time_pattern(pattern).search(text) is not None


def _pattern(validator: Validator, pattern: str, instance: Any, _: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, patterns: Mapping[str, Any], instance: Any, _: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _matches(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Validator, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = sorted(
        name
        for name in instance
        if name not in declared and not any(_matches(pattern, name) for pattern in patterns)
    )
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif additional is False and extras:
        names = ", ".join(repr(name) for name in extras)
        verb = "was" if len(extras) == 1 else "were"
        yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def signature(secret: bytes, *, timestamp: int, payload: bytes) -> str:
    """HMAC-SHA256 over ``"{timestamp}." + payload``, as sent in the signature header."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(secret: bytes, *, timestamp: str, payload: bytes, header: str, now: float) -> bool:
    """What a webhook receiver checks: a fresh timestamp and a matching signature."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent_at) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(signature(secret, timestamp=sent_at, payload=payload), header)


@dataclass(frozen=True)
class WebhookRequest:
    """One HTTP request of a webhook tool, ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


def webhook_request(
    tool: WebhookTool,
    arguments: Mapping[str, Any],
    *,
    secret: bytes | None,
    timestamp: int,
    session_id: uuid.UUID | None,
    agent_id: uuid.UUID,
) -> WebhookRequest:
    """The request for a call of `tool`: JSON body (query string for GET), signed when it has a secret.

    The signed payload is the body, or for GET the whole query string (the tool URL's own query
    included), so the receiver verifies exactly the bytes it parses. `url` is already encoded and
    must be sent as it is (yarl's ``URL(url, encoded=True)``): re-quoting it would decode ``/``, ``:``
    and ``@`` in the arguments and break the signature.
    """
    headers = {
        "User-Agent": "agentline-worker",
        "X-Agentline-Tool": tool.name,
        "X-Agentline-Agent-Id": str(agent_id),
    }
    if session_id is not None:
        headers["X-Agentline-Session-Id"] = str(session_id)
    url = str(tool.url)
    body: bytes | None
    if tool.method == "GET":
        url, query = _with_query(url, arguments)
        payload = query.encode()
        body = None
    else:
        payload = json.dumps(dict(arguments), separators=(",", ":"), sort_keys=True).encode()
        headers["Content-Type"] = "application/json"
        body = payload
    if secret is not None:
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = signature(secret, timestamp=timestamp, payload=payload)
    return WebhookRequest(method=tool.method, url=url, headers=headers, body=body)


def _with_query(url: str, arguments: Mapping[str, Any]) -> tuple[str, str]:
    """`url` with `arguments` added to its query, and that whole query, percent-encoded; the
    fragment is dropped (it is never sent)."""
    base, _, query = url.partition("#")[0].partition("?")
    encoded = urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()})
    query = "&".join(part for part in (query, encoded) if part)
    return (f"{base}?{query}" if query else base), query


def destination_refusal(
    address: IPv4Address | IPv6Address, *, allowed: Sequence[IPv4Network | IPv6Network]
) -> str | None:
    """Why a tool may not call `address`, or None when it may.

    Agents are configured by the organisations' users, so a tool URL must not become a way into the
    platform's own network: loopback, private, link-local (cloud metadata) and other non-public
    addresses are refused unless the operator allowed their network (`TOOL_ALLOWED_NETWORKS`).
    """
    if any(address in network for network in allowed):
        return None
    if address.is_global and not address.is_multicast:
        return None
    return f"{address} is not a public address (allow its network in TOOL_ALLOWED_NETWORKS)"


def tool_result_text(*, status: int, body: str, cut: bool = False) -> str:
    """What the model reads after a webhook answered 2xx: the body, bounded, saying so when the
    answer was longer (`cut`: longer than what was read), so that the model does not take a part for
    the whole."""
    text = body.strip() or f"(HTTP {status}, empty answer)"
    if cut or len(text) > MAX_TOOL_RESULT_CHARS:
        return text[:MAX_TOOL_RESULT_CHARS] + TOOL_RESULT_CUT_NOTE
    return text


def tool_failure_text(tool_name: str, *, status: int | None, body: str = "") -> str:
    """What the model reads when a webhook failed, so it can tell the caller instead of guessing."""
    if status is None:
        return f"The tool {tool_name} could not be reached. Tell the caller it is unavailable."
    detail = body.strip()[:300]
    suffix = f": {detail}" if detail else ""
    return f"The tool {tool_name} failed with HTTP {status}{suffix}"


def tool_unconfigured_text(tool_name: str) -> str:
    """What the model reads when a tool names a signing secret the worker does not have: the call is
    not made, so the model must not claim it was."""
    return f"The tool {tool_name} is not configured. Tell the caller it is unavailable."


# transcript, metrics, end reasons


def transcript_entry(*, role: str, text: str | None, created_at: float) -> TranscriptEntry | None:
    """A chat message as a transcript line; None for roles and empty texts the caller never heard."""
    if role not in ("user", "assistant") or not text or not text.strip():
        return None
    return TranscriptEntry(
        role="agent" if role == "assistant" else "user",
        text=text.strip(),
        at=datetime.fromtimestamp(created_at, UTC),
    )


def turn_metrics(
    agent_metrics: Mapping[str, Any], user_metrics: Mapping[str, Any] | None
) -> TurnMetrics | None:
    """One exchange's latencies (ms), from livekit-agents' per-message metrics.

    Only replies to the user's speech count as turns: the greeting and replies to text have no
    end of user speech, so no `e2e_latency`.
    """
    e2e = agent_metrics.get("e2e_latency")
    if e2e is None:
        return None

    def ms(value: Any) -> float | None:
        return round(float(value) * 1000, 1) if isinstance(value, int | float) else None

    return TurnMetrics(
        latency_ms=ms(e2e),
        stt_ms=ms((user_metrics or {}).get("transcription_delay")),
        llm_ttft_ms=ms(agent_metrics.get("llm_node_ttft")),
        tts_ttfb_ms=ms(agent_metrics.get("tts_node_ttfb")),
    )


def end_reason(
    close_reason: str,
    *,
    ended_by_tool: bool,
    room_gone: bool,
) -> EndReason:
    """Name how a session ended, from livekit-agents' close reason and what the worker saw.

    The worker itself closes a session only through end_call; any other "user_initiated" or
    "job_shutdown" close comes from the job being stopped, i.e. the worker shutting down, unless
    the room went away first.
    """
    if ended_by_tool:
        return "end_call"
    if close_reason == "participant_disconnected":
        return "user_hangup"
    if close_reason == "error":
        return "error"
    if room_gone:
        return "room_finished"
    if close_reason in ("user_initiated", "job_shutdown"):
        return "worker_shutdown"
    return "completed"


def dispatch_timeline(
    *,
    received_at: float,
    accepted_at: float,
    assigned_at: float,
    launched_at: float,
    entered_at: float,
    joined_at: float,
) -> dict[str, float]:
    """Where a dispatch's time went, in ms per step, from LiveKit's job request to our room join.

    Unix-second timestamps; livekit-agents leaves the first four at 0.0 when it does not know them
    (resumed jobs), and a step with an unknown start is left out rather than reported as years.
    """
    steps = [
        ("accept_ms", received_at, accepted_at),
        ("assign_ms", accepted_at, assigned_at),
        ("launch_ms", assigned_at, launched_at),
        ("entrypoint_ms", launched_at, entered_at),
        ("connect_ms", entered_at, joined_at),
        ("dispatch_ms", received_at, joined_at),
    ]
    return {name: round((end - start) * 1000, 1) for name, start, end in steps if start > 0 and end > 0}


def started_event(
    plan: SessionPlan, agent: AgentConfig, *, session_id: uuid.UUID, worker_id: str, job_id: str
) -> SessionStarted:
    """`session.started`: the worker joined the room and the agent is live."""
    return SessionStarted(
        org_id=agent.org_id,
        agent_id=agent.id,
        session_id=session_id,
        data=SessionStartedData(room_name=plan.room_name, worker=worker_id, job=job_id),
    )


def ended_event(
    *,
    session_id: uuid.UUID,
    room_name: str,
    reason: EndReason,
    agent: AgentConfig | None = None,
    agent_id: uuid.UUID | None = None,
    detail: str | None = None,
    duration_seconds: float | None = None,
    transcript: list[TranscriptEntry] | None = None,
    turns: list[TurnMetrics] | None = None,
) -> SessionEnded:
    """`session.ended`, for a call that ran or one that was refused before it began."""
    return SessionEnded(
        org_id=agent.org_id if agent else None,
        agent_id=agent.id if agent else agent_id,
        session_id=session_id,
        data=SessionEndedData(
            reason=reason,
            detail=detail[:500] if detail else None,
            room_name=room_name,
            duration_seconds=duration_seconds,
            transcript=transcript or [],
            turns=turns or [],
        ),
    )
