"""Network namespaces for tests that carry WebRTC media.

WebRTC needs a non-loopback interface, and the network rule forbids the machine's LAN address. So a
media test makes its own namespace (`ip netns add agentline-<random>`) with loopback and a veth pair
whose both ends live inside it, the first end holding a private address (10.213.x.2/24). Nothing
inside has a route out. LiveKit, the rtc clients, the worker and Chromium all run inside
(`ip netns exec`).

Two kinds of TCP relay join the namespace to the host's loopback without routing:
- `forward_into(port)`: a host service on 127.0.0.1:port (RabbitMQ, Redis, the registry, a fake
  model server...) answers at 127.0.0.1:port inside the namespace too, so URLs stay the same;
- `expose(port)`: a server inside (LiveKit's API) answers on a host loopback port.
A relay is a socket made in the other namespace (`setns` in a short-lived thread: a socket keeps the
namespace it was created in), so no packet ever leaves loopback or the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from agentline_common.testing.reaper import REAPER
from agentline_common.testing.servers import LOOPBACK, ServerError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
INTERFACE = "agl0"
PEER_INTERFACE = "agl1"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _ip(*args: str) -> None:
    result = subprocess.run(  # noqa: S603
        ["ip", *args],  # noqa: S607 - iproute2 from PATH
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise ServerError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def socket_in_namespace(namespace: str, family: int, kind: int) -> socket.socket:
    """A socket that belongs to `namespace` (made by a thread that joined it, then ended)."""
    made: dict[str, Any] = {}

    def make() -> None:
        try:
            with (NETNS_DIR / namespace).open("rb") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
            made["socket"] = socket.socket(family, kind)
        except OSError as error:
            made["error"] = error

    thread = threading.Thread(target=make, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    sock: socket.socket = made["socket"]
    return sock


class _Relays:
    """TCP relays between the host's loopback and a namespace, on one background event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netns-relays", daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []

    def add(
        self,
        listener: socket.socket,
        *,
        connect: Callable[[], socket.socket],
        target: tuple[str, int],
    ) -> None:
        listener.setblocking(False)
        listener.listen(128)

        async def serve() -> asyncio.Server:
            async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                upstream = connect()
                upstream.setblocking(False)
                try:
                    await self._loop.sock_connect(upstream, target)
                    up_reader, up_writer = await asyncio.open_connection(sock=upstream)
                except OSError:
                    upstream.close()
                    writer.close()
                    return
                try:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                except asyncio.CancelledError:
                    # The relays are closing: end this connection quietly (nobody awaits it).
                    writer.close()
                    up_writer.close()

            server = await asyncio.start_server(relay, sock=listener)
            self._servers.append(server)
            return server

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class NetworkNamespace:
    """A private network namespace with a non-loopback address, torn down with all its processes.

    `address` is the namespace's own address (10.213.x.2); servers inside bind to it and clients
    inside connect to it. `command(argv)` wraps a command to run inside.
    """

    def __init__(self) -> None:
        self.name = f"agentline-{secrets.token_hex(4)}"
        subnet = secrets.randbelow(254) + 1
        self.address = f"10.213.{subnet}.2"
        self.prefix_length = 24
        self._relays: _Relays | None = None
        self._created = False

    def create(self) -> NetworkNamespace:
        _ip("netns", "add", self.name)
        self._created = True
        REAPER.shell(f"ip netns pids {self.name} | xargs -r kill -9; ip netns del {self.name}")
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip(
                "-n", self.name, "link", "add", INTERFACE, "type", "veth", "peer", "name",
                PEER_INTERFACE,
            )  # fmt: skip
            _ip("-n", self.name, "addr", "add", f"{self.address}/{self.prefix_length}", "dev", INTERFACE)
            _ip("-n", self.name, "link", "set", INTERFACE, "up")
            _ip("-n", self.name, "link", "set", PEER_INTERFACE, "up")
        except ServerError:
            self.close()
            raise
        return self

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace (in its own process group)."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(argv), **kwargs)  # noqa: S603

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to its end; output captured as text."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(  # noqa: S603
            self.command(argv), text=True, timeout=timeout, check=False, **kwargs
        )

    def run_python(
        self,
        args: Sequence[str],
        *,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run this interpreter (the workspace's venv) inside the namespace, e.g. `["-m", "pkg"]`."""
        return self.run([sys.executable, *args], timeout=timeout, env=env)

    def popen_python(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return self.popen([sys.executable, *args], **kwargs)

    def _relay_loop(self) -> _Relays:
        if self._relays is None:
            self._relays = _Relays()
        return self._relays

    def forward_into(self, port: int) -> None:
        """Make the host's 127.0.0.1:`port` answer at 127.0.0.1:`port` inside the namespace."""
        listener = socket_in_namespace(self.name, socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        self._relay_loop().add(
            listener,
            connect=lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
            target=(LOOPBACK, port),
        )

    def expose(self, port: int, *, address: str | None = None) -> int:
        """Make `address`:`port` inside the namespace answer on a host loopback port (returned)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        host_port: int = listener.getsockname()[1]
        self._relay_loop().add(
            listener,
            connect=lambda: socket_in_namespace(self.name, socket.AF_INET, socket.SOCK_STREAM),
            target=(address or self.address, port),
        )
        return host_port

    def pids(self) -> list[int]:
        result = subprocess.run(  # noqa: S603
            ["ip", "netns", "pids", self.name],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return [int(pid) for pid in result.stdout.split()]

    def close(self) -> None:
        """Stop the relays, end every process still inside, and delete the namespace."""
        if self._relays is not None:
            self._relays.close()
            self._relays = None
        if not self._created:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = self.pids()
            if not pids:
                break
        with contextlib.suppress(ServerError):
            _ip("netns", "del", self.name)
        self._created = False

    def __enter__(self) -> NetworkNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def network_namespace() -> Iterator[NetworkNamespace]:
    """A fresh namespace for the duration of the block."""
    with NetworkNamespace() as namespace:
        yield namespace
