"""Settings every service shares. Each service subclasses `CommonSettings` with its own fields.

This is the only module family that reads the environment (pydantic-settings does it for us).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Connection settings for the shared infrastructure, read from environment variables."""

    # An invalid setting's error names the variable, never its value: values hold passwords and keys.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True, hide_input_in_errors=True)

    service_name: str = "agentline"
    environment: Literal["development", "test", "production"] = "development"
    log_format: Literal["json", "console"] | None = None
    log_level: str = "INFO"

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    bus_exchange: str = "agentline"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")

    livekit_url: str = ""
    """The URL services use for LiveKit's server API (may be cluster-internal)."""
    livekit_public_url: str = ""
    """The WebSocket URL browsers use; falls back to `livekit_url` when empty."""
    livekit_api_key: SecretStr | None = None
    livekit_api_secret: SecretStr | None = None

    last_known_agent_max_age_seconds: int = Field(default=86_400, gt=0)
    """How long each look-up's answer is kept, to route an agent's or a number's calls while the
    registry cannot be asked (the telephony gateway and the worker do; the token-service only keeps
    answers). See `registry_client`."""

    jwks_url: str = "http://127.0.0.1:8101/.well-known/jwks.json"
    jwt_issuer: str = "agentline-registry"
    jwt_audience: str = "agentline"

    @property
    def livekit_configured(self) -> bool:
        """True when every value needed to mint tokens and call LiveKit's API is present."""
        return bool(
            self.livekit_url
            and self.livekit_api_key
            and self.livekit_api_key.get_secret_value()
            and self.livekit_api_secret
            and self.livekit_api_secret.get_secret_value()
        )

    @property
    def browser_livekit_url(self) -> str:
        """The LiveKit URL to hand to a browser."""
        return self.livekit_public_url or self.livekit_url

    @property
    def json_logs(self) -> bool:
        """JSON in production unless told otherwise; readable console output elsewhere."""
        if self.log_format is not None:
            return self.log_format == "json"
        return self.environment == "production"
