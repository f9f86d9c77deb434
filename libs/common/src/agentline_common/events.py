"""The events on the bus: one envelope, one pydantic model per type, discriminated by `type`.

Routing keys are the event types (`<noun>.<past participle>`). Bump `version` of a type when its `data`
changes incompatibly; consumers reject versions they do not know.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

SESSION_NAMESPACE = uuid.UUID("5b0f9f4e-3d6c-4c1e-9b7a-2f1d8e6a4c10")


def utc_now() -> datetime:
    return datetime.now(UTC)


CALL_SID_SIP_HEADER = "X-Agentline-CallSid"
"""The SIP header in which the gateway's TwiML hands the webhook's CallSid to the worker. Twilio's own
`X-Twilio-CallSid` names the leg that carries the INVITE, which <Dial> makes as a call of its own
(its DialCallSid), not the caller's call the webhook named."""
CALL_SID_ATTRIBUTE = "sip.h.x-agentline-callsid"
"""The participant attribute LiveKit's inbound trunk maps `CALL_SID_SIP_HEADER` to."""


def phone_session_id(call_sid: str) -> uuid.UUID:
    """The session id of a phone call, derived from Twilio's CallSid.

    The gateway and the worker compute it independently, so both name the same session without
    talking to each other.
    """
    return uuid.uuid5(SESSION_NAMESPACE, f"call:{call_sid}")


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    version: int = 1
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    org_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None


class PhoneCall(BaseModel):
    sid: str = Field(min_length=1, max_length=64)
    from_number: str = Field(alias="from", max_length=64)
    to_number: str = Field(alias="to", max_length=64)

    model_config = ConfigDict(populate_by_name=True, frozen=True)


class SessionRequestedData(BaseModel):
    kind: Literal["test", "phone"]
    room_name: str = Field(max_length=128)
    requested_by: uuid.UUID | None = None
    call: PhoneCall | None = None
    expires_at: AwareDatetime


class SessionStartedData(BaseModel):
    room_name: str = Field(max_length=128)
    worker: str
    job: str


class TranscriptEntry(BaseModel):
    role: Literal["user", "agent"]
    text: str
    at: AwareDatetime


class TurnMetrics(BaseModel):
    """One exchange. `latency_ms`: end of the user's speech to the agent's first audio."""

    latency_ms: float | None = None
    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None


EndReason = Literal[
    "completed",
    "user_hangup",
    "end_call",
    "agent_unavailable",
    "error",
    "worker_shutdown",
    "room_finished",
    "expired",
    "call_failed",
]


class SessionEndedData(BaseModel):
    reason: EndReason
    detail: str | None = None
    room_name: str | None = Field(default=None, max_length=128)
    duration_seconds: float | None = None
    transcript: list[TranscriptEntry] = Field(default_factory=list)
    turns: list[TurnMetrics] = Field(default_factory=list)


class AgentChangedData(BaseModel):
    change: Literal["created", "updated", "deleted"]
    phone_numbers: list[str] = Field(
        default_factory=list,
        description="Numbers bound before and after the change, so caches drop by-number entries too.",
    )


class SessionRequested(_Envelope):
    type: Literal["session.requested"] = "session.requested"
    data: SessionRequestedData


class SessionStarted(_Envelope):
    type: Literal["session.started"] = "session.started"
    data: SessionStartedData


class SessionEnded(_Envelope):
    type: Literal["session.ended"] = "session.ended"
    data: SessionEndedData


class AgentChanged(_Envelope):
    type: Literal["agent.changed"] = "agent.changed"
    data: AgentChangedData


Event = Annotated[
    SessionRequested | SessionStarted | SessionEnded | AgentChanged,
    Field(discriminator="type"),
]
EVENT_TYPES = ("session.requested", "session.started", "session.ended", "agent.changed")
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(body: bytes | str) -> Event:
    """Parse a JSON body into its typed event; raises pydantic.ValidationError otherwise."""
    return _EVENT_ADAPTER.validate_json(body)


def encode_event(event: Event) -> bytes:
    """The wire form: JSON with field aliases (``call.from``/``call.to``)."""
    return event.model_dump_json(by_alias=True).encode()
