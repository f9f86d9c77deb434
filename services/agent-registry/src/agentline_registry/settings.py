"""The registry's settings, read from the environment (on top of the shared ones)."""

from __future__ import annotations

from pathlib import Path

from agentline_common.settings import CommonSettings
from pydantic import Field, SecretStr


class RegistrySettings(CommonSettings):
    """Database, HTTP listener, token signing and the session-log sweep."""

    service_name: str = "agent-registry"

    database_url: str = "sqlite+aiosqlite:///./agentline.db"
    host: str = "127.0.0.1"
    port: int = 8101

    jwt_private_key: SecretStr | None = None
    """PEM of the RSA key that signs users' tokens; wins over `jwt_private_key_file`."""
    jwt_private_key_file: Path | None = None
    access_token_minutes: int = 15
    login_failures_per_email: int = Field(default=5, ge=1)
    """Failed log-ins one email may have in `login_failure_window_seconds`; past it, 429 (with
    Retry-After) even for the right password, counted in Redis across replicas."""
    login_failure_window_seconds: int = Field(default=300, ge=1)

    session_expiry_seconds: int = 600
    """How long a requested session may wait to start when its event names no expiry (token TTL)."""
    session_sweep_interval_seconds: float = 30.0
    queue_prefix: str = ""
    """Put before the registry's queue names; tests that run several registries on one broker give
    each its own (queues are per broker, not per exchange)."""
    outbox_poll_seconds: float = 1.0
    startup_timeout_seconds: float = 30.0
    """How long start-up keeps retrying the broker before giving up."""
