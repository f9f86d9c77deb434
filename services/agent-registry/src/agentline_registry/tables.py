"""The registry's tables (SQLModel). Only repository.py queries them; migrations/ creates them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from agentline_common.outbox import outbox_table
from sqlalchemy import JSON, Column, DateTime, ForeignKey, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Org(SQLModel, table=True):
    __tablename__ = "orgs"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)
    name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=256)
    managed_by_org_id: uuid.UUID | None = Field(
        default=None,
        description="The organisation whose admin made this account and chose its password; no foreign"
        " key, so the mark outlives the organisation. None for accounts an operator made.",
    )
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class Membership(SQLModel, table=True):
    __tablename__ = "memberships"

    org_id: uuid.UUID = Field(sa_column=Column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True))
    user_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    )
    role: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class Agent(SQLModel, table=True):
    __tablename__ = "agents"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    org_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    name: str = Field(max_length=200)
    active: bool = True
    instructions: str = Field(sa_column=Column(Text, nullable=False))
    first_message: str = Field(sa_column=Column(Text, nullable=False))
    language: str = Field(max_length=16)
    voice: str = Field(max_length=64)
    stt_model: str = Field(max_length=128)
    llm_model: str = Field(max_length=128)
    tts_model: str = Field(max_length=128)
    temperature: float
    tools: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class PhoneNumber(SQLModel, table=True):
    __tablename__ = "phone_numbers"

    number: str = Field(primary_key=True, max_length=16)
    agent_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    org_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class CallSession(SQLModel, table=True):
    """One row of the call log. No foreign keys: events may name an agent before or after it exists,
    and the log outlives a deleted agent."""

    __tablename__ = "sessions"
    id: uuid.UUID = Field(primary_key=True)
    org_id: uuid.UUID | None = Field(default=None, index=True)
    agent_id: uuid.UUID | None = Field(default=None, index=True)
    kind: str | None = Field(default=None, max_length=8)
    room_name: str | None = Field(default=None, max_length=128)
    status: str = Field(max_length=16, index=True)
    requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    requested_by: uuid.UUID | None = None
    call_sid: str | None = Field(default=None, max_length=64)
    from_number: str | None = Field(default=None, max_length=64)
    to_number: str | None = Field(default=None, max_length=64)
    worker: str | None = Field(default=None, max_length=200)
    end_reason: str | None = Field(default=None, max_length=32)
    end_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    duration_seconds: float | None = None
    transcript: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    turns: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


OUTBOX = outbox_table(SQLModel.metadata)
