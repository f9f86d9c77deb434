"""Where the test fixtures find their servers (read from `AGENTLINE_TEST_*` environment variables)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TestInfraSettings(BaseSettings):
    """URLs of servers someone already runs; any left empty is started by the fixtures themselves.

    `AGENTLINE_TEST_POSTGRES_URL` is an administrative URL (a role that may CREATE DATABASE), since
    every test gets a fresh database of its own on that server.
    """

    __test__ = False  # not a test class, whatever pytest's name matching thinks

    model_config = SettingsConfigDict(env_prefix="AGENTLINE_TEST_", extra="ignore", frozen=True)

    amqp_url: str = ""
    redis_url: str = ""
    postgres_url: str = ""
    livekit_url: str = ""
    livekit_api_key: str = ""
    livekit_api_secret: SecretStr = SecretStr("")
