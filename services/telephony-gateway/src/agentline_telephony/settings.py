"""The telephony gateway's settings, read from the environment (see docs/architecture.md)."""

from __future__ import annotations

from typing import Annotated

from agentline_common.settings import CommonSettings
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode


class TelephonySettings(CommonSettings):
    """Twilio, LiveKit SIP and outbox settings on top of the shared connection settings."""

    service_name: str = "telephony-gateway"
    host: str = "127.0.0.1"
    port: int = 8103

    public_base_url: str = "http://127.0.0.1:8103"
    """The URL Twilio calls us at (scheme://host[:port]), as configured in Twilio's console.

    Signatures are computed over it, never over the Host header, which a proxy may rewrite and a
    client may forge.
    """
    twilio_auth_token: SecretStr | None = None

    telephony_database_url: SecretStr = SecretStr("sqlite+aiosqlite:///./telephony-gateway.db")
    """Where answered calls and the outbox live (SQLite by default; PostgreSQL with several replicas)."""

    livekit_sip_host: str = "127.0.0.1:5060"
    """Where Twilio's <Sip> reaches LiveKit's SIP bridge: host[:port][;transport=...]."""
    sip_username: str = ""
    sip_password: SecretStr | None = None
    """Digest credentials: set on the trunk by `provision-sip` and sent by the TwiML <Sip>; both or
    neither (one alone authenticates nothing)."""
    sip_allow_open_trunk: bool = False
    """Let `provision-sip` create a trunk with neither credentials nor allowed addresses, which LiveKit
    treats as accepting every INVITE from anyone: for a local machine only, never where LiveKit SIP
    is reachable from the internet."""

    agent_name: str = "agentline-agent"
    sip_trunk_name: str = "agentline-inbound"
    sip_dispatch_rule_name: str = "agentline-inbound"
    sip_trunk_numbers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Numbers the inbound trunk accepts; empty accepts any number the trunk is reached with."""
    sip_allowed_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Source addresses or CIDRs allowed to send INVITEs (Twilio's signalling ranges in production)."""

    lookup_timeout_seconds: float = Field(default=1.5, gt=0, le=10)
    """Bound on the agent look-up: Twilio waits at most 15 s for TwiML, callers far less patiently."""
    session_request_ttl_seconds: int = Field(default=600, gt=0)
    call_answer_ttl_seconds: int = Field(default=86_400, gt=0)
    """How long a CallSid's answer is kept for retried webhooks (Twilio retries within minutes)."""
    broker_ready_grace_seconds: float = Field(default=30.0, ge=0, le=600)
    """How long after start-up /readyz waits for the first broker connection, which look-ups of agents
    not yet cached need. Past it the gateway reports ready without the broker: answering from the
    Redis cache, with events kept in the outbox, beats refusing every call while the broker is down."""
    outbox_relay_interval_seconds: float = Field(default=0.5, gt=0)

    @field_validator("sip_trunk_numbers", "sip_allowed_addresses", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _sip_credentials_in_pairs(self) -> TelephonySettings:
        if bool(self.sip_username) != bool(self.sip_password and self.sip_password.get_secret_value()):
            raise ValueError(
                "set both SIP_USERNAME and SIP_PASSWORD (the trunk's digest credentials), or neither"
            )
        return self

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")
