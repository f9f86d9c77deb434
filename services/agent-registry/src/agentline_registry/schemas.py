"""The shapes of the HTTP API (requests and answers). Limits here are what bad input is measured by."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from agentline_common.agents import WebhookTool
from agentline_common.auth import Role
from agentline_common.rooms import E164_PATTERN
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

MAX_TOOLS = 32
MAX_PAGE = 100

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Instructions = Annotated[str, StringConstraints(max_length=20_000)]
FirstMessage = Annotated[str, StringConstraints(max_length=2_000)]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length=16)]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@-]{1,128}$")]
Voice = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@ -]{1,64}$")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
    Field(description="an email address", examples=["ada@example.com"]),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
E164 = Annotated[
    str,
    StringConstraints(pattern=f"^{E164_PATTERN}$", max_length=16),
    Field(description="E.164: '+' then 8 to 15 digits, the first 1-9", examples=["+14155550100"]),
]


def _unique_tool_names(tools: list[WebhookTool]) -> list[WebhookTool]:
    names = [tool.name for tool in tools]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique; repeated: {', '.join(duplicates)}")
    return tools


Tools = Annotated[list[WebhookTool], Field(max_length=MAX_TOOLS), AfterValidator(_unique_tool_names)]

_STRICT = ConfigDict(extra="forbid")


class LoginRequest(BaseModel):
    model_config = _STRICT

    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class TokenRead(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the scheme name, not a secret
    expires_at: datetime


class MembershipRead(BaseModel):
    org_id: uuid.UUID
    org_name: str
    role: Role


class MeRead(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    memberships: list[MembershipRead]


class OrgCreate(BaseModel):
    model_config = _STRICT

    name: Name


class OrgRead(BaseModel):
    id: uuid.UUID
    name: str
    role: Role
    created_at: datetime


class MemberCreate(BaseModel):
    """Add a person to the organisation; with a password, a new account is made for them."""

    model_config = _STRICT

    email: Email
    role: Role = Role.MEMBER
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    password: Password | None = None


class MemberRead(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    role: Role


class AgentCreate(BaseModel):
    model_config = _STRICT

    name: Name
    active: bool = True
    instructions: Instructions = ""
    first_message: FirstMessage = ""
    language: Language = "en"
    voice: Voice = "alloy"
    stt_model: ModelName = "whisper-1"
    llm_model: ModelName = "gpt-4o-mini"
    tts_model: ModelName = "tts-1"
    temperature: Temperature = 0.7
    tools: Tools = Field(default_factory=list)


class AgentUpdate(BaseModel):
    """Only the fields given change; `null` is refused (every field has a value)."""

    model_config = _STRICT

    name: Name | None = None
    active: bool | None = None
    instructions: Instructions | None = None
    first_message: FirstMessage | None = None
    language: Language | None = None
    voice: Voice | None = None
    stt_model: ModelName | None = None
    llm_model: ModelName | None = None
    tts_model: ModelName | None = None
    temperature: Temperature | None = None
    tools: Tools | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_nulls(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null; leave the field out to keep its value")
        return value


class AgentRead(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    name: str
    active: bool
    instructions: str
    first_message: str
    language: str
    voice: str
    stt_model: str
    llm_model: str
    tts_model: str
    temperature: float
    tools: list[WebhookTool]
    phone_numbers: list[str]
    created_at: datetime
    updated_at: datetime


class PhoneNumberCreate(BaseModel):
    model_config = _STRICT

    number: E164


class PhoneNumberRead(BaseModel):
    number: str
    agent_id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime


class SessionRead(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    kind: Literal["test", "phone"] | None
    room_name: str | None
    status: Literal["requested", "active", "ended", "failed", "expired"]
    requested_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    from_number: str | None
    to_number: str | None
    end_reason: str | None
    end_detail: str | None
    duration_seconds: float | None
    transcript: list[dict[str, Any]]
    turns: list[dict[str, Any]]


ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int
    limit: int
    offset: int
