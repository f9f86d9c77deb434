"""LiveKit inside a network namespace, for tests where media flows between real clients.

The server binds the namespace's address and announces it as its node IP; clients, workers and
browsers that exchange media run inside the same namespace (`run_python`, `popen`, `command`).
Host-side code (token-service tests, RoomService calls) reaches the server's API and signalling
through `host_url`/`host_http_url`, a relay on the host's loopback.
"""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from livekit import api

from agentline_common.testing.netns import NetworkNamespace
from agentline_common.testing.servers import LiveKitServer


def participant_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    ttl: datetime.timedelta = datetime.timedelta(minutes=10),
) -> str:
    """A token to join one room, publish and subscribe (what a test's rtc client needs)."""
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_ttl(ttl)
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
        .to_jwt()
    )


class NamespacedLiveKit:
    """A LiveKit server running inside its own network namespace.

    - `url`, `http_url`: the server as seen from inside the namespace (media clients use these);
    - `host_url`, `host_http_url`: the same server from the host's loopback (API and signalling);
    - `api_key`, `api_secret`: credentials (secret >= 32 bytes);
    - `namespace`: the NetworkNamespace (`forward_into(port)` lets processes inside reach a host
      loopback service such as RabbitMQ at the same 127.0.0.1 URL);
    - `run_python(args)` / `popen_python(args)`: this venv's interpreter inside the namespace.
    """

    def __init__(self, *, base_dir: Path, redis_port: int | None = None) -> None:
        self.namespace = NetworkNamespace()
        self._base_dir = base_dir
        self._redis_port = redis_port
        self._server: LiveKitServer | None = None
        self.url = self.http_url = self.host_url = self.host_http_url = ""
        self.api_key = self.api_secret = ""

    def start(self) -> None:
        self.namespace.create()
        try:
            redis_address = None
            if self._redis_port is not None:
                # LiveKit's SIP APIs need Redis; the host's Redis answers inside at the same port.
                self.namespace.forward_into(self._redis_port)
                redis_address = f"127.0.0.1:{self._redis_port}"
            server = LiveKitServer(
                base_dir=self._base_dir,
                redis_address=redis_address,
                host=self.namespace.address,
                wrap=self.namespace.exec_prefix,
            )
            self._server = server
            self.url, self.http_url = server.url, server.http_url
            self.api_key, self.api_secret = server.api_key, server.api_secret
            host_port = self.namespace.expose(server.port)
            self.host_url = f"ws://127.0.0.1:{host_port}"
            self.host_http_url = f"http://127.0.0.1:{host_port}"
            server.spawn()
            server.wait_ready(probe=("127.0.0.1", host_port))
        except Exception:
            self.stop()
            raise

    def token(self, *, room: str, identity: str) -> str:
        return participant_token(
            api_key=self.api_key, api_secret=self.api_secret, room=room, identity=identity
        )

    def command(self, argv: Sequence[str]) -> list[str]:
        return self.namespace.command(argv)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return self.namespace.popen(argv, **kwargs)

    def run_python(
        self, args: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.namespace.run_python(args, timeout=timeout, env=env)

    def popen_python(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return self.namespace.popen_python(args, **kwargs)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.namespace.close()
