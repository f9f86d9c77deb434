"""The token-service's settings, read from the environment (see docs/architecture.md)."""

from __future__ import annotations

from agentline_common.settings import CommonSettings
from pydantic import Field


class TokenServiceSettings(CommonSettings):
    """Everything the token-service reads from its environment."""

    service_name: str = "token-service"
    host: str = "127.0.0.1"
    port: int = Field(default=8102, ge=1, le=65535)

    agent_name: str = Field(default="agentline-agent", min_length=1, max_length=128)
    """The name the workers register under with LiveKit; the token dispatches it explicitly."""
    token_ttl_seconds: int = Field(default=600, ge=10, le=3600)
    room_empty_timeout_seconds: int = Field(default=300, ge=1, le=3600)

    rate_limit_requests: int = Field(default=10, ge=1)
    """Test tokens one user may get per `rate_limit_window_seconds` (sliding window, in Redis)."""
    rate_limit_window_seconds: int = Field(default=60, ge=1)

    dependency_timeout_seconds: float = Field(default=1.5, gt=0, le=10)
    """How long one call to the registry, the broker or Redis may take before we answer 503."""
    broker_startup_wait_seconds: float = Field(default=10.0, ge=0)
    """How long start-up waits for the broker before starting without it: not ready and answering 503
    until it connects in the background (exiting instead would crash-loop while the broker is down)."""
    session_mapping_ttl_seconds: int = Field(default=86400, ge=60)
    """How long the webhook can still map a test room back to its session: a day, so that even a long
    test call whose worker died is closed when LiveKit reports its room finished."""
