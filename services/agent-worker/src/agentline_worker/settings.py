"""The worker's settings, read from the environment (see docs/architecture.md)."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from agentline_common.settings import CommonSettings
from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator


class WorkerSettings(CommonSettings):
    """What the worker needs beyond the shared infrastructure: its LiveKit name, models, secrets."""

    service_name: str = "agent-worker"

    agent_name: str = "agentline-agent"
    """The name LiveKit dispatches by (explicit dispatch): tokens and SIP rules must use it."""

    openai_base_url: str = "https://api.openai.com/v1"
    """Any OpenAI-compatible server: OpenAI itself, a local model server, or the fake one."""
    openai_api_key: SecretStr = SecretStr("")

    tool_secrets: dict[UUID, dict[str, SecretStr]] = Field(default_factory=dict)
    """Signing secrets of webhook tools per organisation, as JSON ``{"<org id>": {"<secret_ref>":
    "<secret>"}}``. An agent's tool names a ref, and only its own organisation's refs resolve: with one
    map for everyone, any organisation could name another's ref and have its requests signed."""

    @field_validator("tool_secrets", mode="before")
    @classmethod
    def _not_the_old_flat_map(cls, value: Any) -> Any:
        """The flat ``{"secret_ref": "secret"}`` of before 2026-11-25 gets a message that says what
        changed, not pydantic's "Input should be a valid UUID"."""
        if isinstance(value, dict) and any(isinstance(secret, str) for secret in value.values()):
            raise ValueError(
                'TOOL_SECRETS is now per organisation: {"<org id>": {"<secret_ref>": "<secret>"}} '
                "(docs/operations.md, upgrading past 2026-11-25)"
            )
        return value

    tool_allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    """Networks tools may call although they are not public, as JSON (``["10.20.0.0/16"]``): where
    your own tool services run. Everything else non-public (loopback, private, link-local) is refused."""

    health_host: str = "127.0.0.1"
    health_port: int = 8104

    vad_silence_seconds: float = Field(default=0.35, ge=0.05, le=5.0)
    """Silence after which Silero VAD says the user stopped speaking."""
    endpointing_delay_seconds: float = Field(default=0.2, ge=0.0, le=5.0)
    """Further wait after the VAD's end of speech before the user's turn is over."""
    job_executor: Literal["thread", "process"] = "thread"
    """Where calls run. "thread": all calls share this process (a fraction of the memory per call,
    no start-up per call); "process": one process per call, isolated from each other's crashes."""
    num_idle_processes: int = Field(default=1, ge=0, le=32)
    """Warm job processes kept ready, so a dispatch does not wait for a process to start."""
    drain_timeout_seconds: int = Field(default=900, ge=1)
    """How long SIGTERM waits for calls in progress before the worker exits anyway."""
    max_sessions: int = Field(default=10, ge=1, le=200)
    """Calls one worker carries at once. Its load is the share of these in use (not CPU: LiveKit
    skips a worker whose reported load is above its target of 0.7, and a busy machine would
    starve dispatch)."""
    load_threshold: float = Field(default=0.7, gt=0, le=1.0)
    """Share of `max_sessions` in use above which the worker tells LiveKit it is full."""
    process_start_timeout_seconds: float = Field(default=60.0, gt=0)
    """How long a job process may take to start (imports and Silero) on a busy machine."""
    job_memory_limit_mb: float = Field(default=0, ge=0)
    """Kill a job process above this (0: no limit)."""

    caller_wait_seconds: float = Field(default=30.0, gt=0, le=600)
    """How long a dispatched agent waits for its caller (the browser, or the SIP participant) before
    it gives the call up as `call_failed`: a dispatch may come before the caller has joined."""

    registry_timeout_seconds: float = Field(default=2.0, gt=0, le=10)
    lookup_give_up_seconds: float = Field(default=5.0, gt=0, le=30)
    """How long a call's agent look-up may take in all (cache, broker, registry) before the call is
    refused: the caller hears silence meanwhile."""
    publish_give_up_seconds: float = Field(default=60.0, gt=0, le=600)
    """How long a call's bus keeps connecting, and a session event is retried, through a broker outage
    before the event is logged as lost."""

    @property
    def end_of_speech_seconds(self) -> float:
        """The configured silence between the end of the user's speech and the end of their turn."""
        return self.vad_silence_seconds + self.endpointing_delay_seconds
