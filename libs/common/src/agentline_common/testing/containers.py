"""Test servers in Docker containers via testcontainers, used when a Docker engine answers.

testcontainers is imported lazily: it is optional, and this machine's tests use local servers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import shutil
import subprocess
from typing import Any

from agentline_common.testing.servers import (
    LOOPBACK,
    amqp_handshake_ok,
    free_port,
    wait_until,
)


def docker_available() -> bool:
    """True when testcontainers is installed and a Docker engine answers `docker info` quickly."""
    if importlib.util.find_spec("testcontainers") is None or shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info"],  # noqa: S607 - the docker CLI from PATH is the point
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class RabbitMQContainer:
    """RabbitMQ in a container on a fixed loopback port, so that a restart keeps its URL."""

    def __init__(self) -> None:
        from testcontainers.rabbitmq import RabbitMqContainer

        self.port = free_port()
        self._container: Any = RabbitMqContainer("rabbitmq:3.13").with_bind_ports(5672, self.port)
        self.url = f"amqp://guest:guest@{LOOPBACK}:{self.port}/"

    def start(self) -> None:
        wrapped = self._container.get_wrapped_container() if self._started else None
        if wrapped is None:
            self._container.start()
        else:
            wrapped.start()
        wait_until(lambda: amqp_handshake_ok(LOOPBACK, self.port), what="RabbitMQ container", process=None)

    @property
    def _started(self) -> bool:
        return self._container.get_wrapped_container() is not None

    def stop(self) -> None:
        """Stop the container without removing it; its data survives for the next `start()`."""
        self._container.get_wrapped_container().stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._container.stop()


class RedisContainer:
    def __init__(self) -> None:
        from testcontainers.redis import RedisContainer as _Redis

        self._container: Any = _Redis("redis:7")

    def start(self) -> None:
        self._container.start()
        host = self._container.get_container_host_ip()
        port = self._container.get_exposed_port(6379)
        self.url = f"redis://{host}:{port}/0"

    def stop(self) -> None:
        self._container.stop()


class PostgresContainer:
    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer as _Postgres

        self._password = secrets.token_urlsafe(24)
        self._container: Any = _Postgres("postgres:15", username="postgres", password=self._password)

    def start(self) -> None:
        self._container.start()
        host = self._container.get_container_host_ip()
        port = self._container.get_exposed_port(5432)
        self._dsn = f"postgresql://postgres:{self._password}@{host}:{port}/"

    def admin_dsn(self, database: str = "postgres") -> str:
        return self._dsn + database

    def stop(self) -> None:
        self._container.stop()
