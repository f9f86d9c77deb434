"""Real infrastructure servers for tests: RabbitMQ, Redis, PostgreSQL and LiveKit.

Each server is started from the locally installed binaries on free loopback ports, in a temporary
directory of its own, and stopped (its whole process group) afterwards. Nothing listens beyond
127.0.0.1 unless a test asks for a network-namespace address explicitly.

The plugin (`agentline_common.testing.plugin`) decides where a server comes from: a URL given in the
environment, or the classes here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from agentline_common.testing.reaper import REAPER

LIVEKIT_VERSION = "v1.13.5"
LIVEKIT_BINARY = (
    Path(os.environ.get("AGENTLINE_OPT") or "/opt/agentline") / f"livekit-server-{LIVEKIT_VERSION}/server"
)
"""Where `make setup` puts the pinned LiveKit server (AGENTLINE_OPT moves it, as in scripts/setup.sh)."""
POSTGRES_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"))
LOOPBACK = "127.0.0.1"
RABBITMQ_APPS_DIR = next(
    iter(sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins"))),
    Path("/usr/lib/rabbitmq/lib/rabbitmq_server/plugins"),
)
START_TIMEOUT = 60.0
DEAD_STUN_PORT = 3478


class ServerError(RuntimeError):
    """A test server could not be started or did not become ready in time."""


class TestServer(Protocol):
    def stop(self) -> None: ...


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now, outside the kernel's ephemeral range.

    A port from the ephemeral range can be taken by the outgoing side of any connection. Worse, a
    client that keeps reconnecting to a stopped server on such a port (aio-pika while a broker
    restarts) can be given that very port as its source and connect to itself, so the server cannot
    listen there again. Source ports never leave the ephemeral range, so ports below it are safe.
    """
    for port in _candidate_ports():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise ServerError("no free TCP port found below the ephemeral range")


def free_udp_port_range(count: int, host: str = LOOPBACK) -> tuple[int, int]:
    """A run of `count` consecutive ports, free now for UDP and TCP (for LiveKit's media ports)."""
    for start in _candidate_ports(run=count):
        ports = range(start, start + count)
        if all(_free_for_udp_and_tcp(host, port) for port in ports):
            _HANDED_OUT.update(ports)
            return start, start + count - 1
    raise ServerError(f"no run of {count} free UDP ports found")


_HANDED_OUT: set[int] = set()
_FIRST_LISTENING_PORT = 10000
_CANDIDATES_TRIED = 200


def _candidate_ports(run: int = 1) -> Iterator[int]:
    """Random starts of `run` ports below the ephemeral range that this process has not handed out.

    Handing a port out once per process keeps two servers of one test run (a broker's AMQP, dist
    and epmd ports) from being given the same port before either of them binds it.
    """
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    span = first_ephemeral - run - _FIRST_LISTENING_PORT
    if span <= 0:
        raise ServerError(f"the ephemeral port range starts at {first_ephemeral}: too low for test servers")
    for _ in range(_CANDIDATES_TRIED):
        start = _FIRST_LISTENING_PORT + secrets.randbelow(span)
        if _HANDED_OUT.isdisjoint(range(start, start + run)):
            yield start


def _free_for_udp_and_tcp(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        try:
            udp.bind((host, port))
            tcp.bind((host, port))
        except OSError:
            return False
    return True


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a server process: ours (PATH, locale), plus its own variables."""
    return {**os.environ, **extra}


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """A server process in its own process group, with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def spawn(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - argv is built by this module, not from input
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        REAPER.process_group(self.process.pid)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServerError(
                f"{self.name} exited with {self.process.returncode}; log {self.log_path}:\n"
                f"{_log_tail(self.log_path)}"
            )

    def terminate(self, *, timeout: float = 20.0) -> None:
        """SIGTERM the process group (graceful shutdown), SIGKILL if it does not end in time."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Children that outlived the leader (e.g. Erlang's helpers) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        REAPER.forget_process_group(process.pid)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_until(
    ready: object, *, what: str, process: ManagedProcess | None, timeout: float = START_TIMEOUT
) -> None:
    """Poll `ready()` until it returns True; fail early and clearly if the process dies."""
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.05)
    log_hint = f"; log {process.log_path}:\n{_log_tail(process.log_path)}" if process else ""
    raise ServerError(f"{what} not ready after {timeout:.0f} s{log_hint}")


def amqp_handshake_ok(host: str, port: int) -> bool:
    """True when the broker answers the AMQP 0-9-1 protocol header with Connection.Start."""
    with socket.create_connection((host, port), timeout=1.0) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        sock.settimeout(2.0)
        frame = sock.recv(7)
        # A method frame (type 1) on channel 0 is Connection.Start.
        return len(frame) == 7 and frame[0] == 1


def redis_ping_ok(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(2.0)
        return sock.recv(16).startswith(b"+PONG")


def tcp_open(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0):
        return True


class RabbitMQServer:
    """A RabbitMQ node of its own: unique node name, own ports, data and logs in a temp dir.

    `stop()` shuts the node down gracefully and `start()` boots it again with the same node name and
    data directory, so durable queues and persistent messages survive a restart (the broker-restart
    tests rely on this).
    """

    def __init__(
        self,
        *,
        base_dir: Path,
        port: int | None = None,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        node_name: str | None = None,
    ) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.epmd_port = epmd_port or free_port()
        self.node_name = node_name or f"agentline-{secrets.token_hex(4)}@localhost"
        self.base_dir = base_dir
        self.url = f"amqp://guest:guest@{self.host}:{self.port}/"
        self._process: ManagedProcess | None = None
        self._write_config()

    def _write_config(self) -> None:
        for sub in ("mnesia", "log", "home"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = {self.host}:{self.port}",
                    "loopback_users.guest = true",
                    "log.console = false",
                    "log.file.level = info",
                    "disk_free_limit.absolute = 50MB",
                ]
            )
            + "\n"
        )
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        _link_core_applications(self.base_dir / "plugins")

    def environment(self) -> dict[str, str]:
        """The variables that give the node its name, ports, data and config (all under base_dir)."""
        base = self.base_dir
        return child_environment(
            {
                "HOME": str(base / "home"),  # the Erlang cookie lives here
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_NODE_IP_ADDRESS": self.host,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
                "RABBITMQ_PLUGINS_DIR": str(base / "plugins"),
                "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
                "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": self.host,
            }
        )

    def argv(self) -> list[str]:
        binary = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if not binary.exists():
            raise ServerError("rabbitmq-server is not installed (run `make setup`)")
        return [str(binary)]

    def spawn(self) -> None:
        # Erlang's port mapper daemonizes itself, out of the broker's process group.
        REAPER.shell(f"{_epmd()} -port {self.epmd_port} -kill")
        self._process = ManagedProcess(
            name="rabbitmq",
            argv=self.argv(),
            log_path=self.base_dir / "log" / "stdout.log",
            env=self.environment(),
            cwd=self.base_dir,
        )
        self._process.spawn()

    def wait_ready(self) -> None:
        wait_until(
            lambda: amqp_handshake_ok(self.host, self.port),
            what="RabbitMQ",
            process=self._process,
            timeout=120.0,
        )

    def start(self) -> None:
        """Boot the node (again) with the same name and data and wait until it accepts AMQP."""
        if self._process is not None:
            return
        self.spawn()
        self.wait_ready()

    def stop(self) -> None:
        """Shut the node down gracefully (SIGTERM), keeping its data directory."""
        if self._process is None:
            return
        self._process.terminate(timeout=60.0)
        self._process = None
        wait_until(lambda: not _port_taken(self.host, self.port), what="RabbitMQ stop", process=None)

    def close(self) -> None:
        """Stop the node and its private epmd for good."""
        self.stop()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(  # noqa: S603
                [_epmd(), "-port", str(self.epmd_port), "-kill"],
                env=self.environment(),
                capture_output=True,
                timeout=10,
                check=False,
            )


def _epmd() -> str:
    return shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"


def _link_core_applications(target: Path) -> None:
    """A plugins directory holding the broker's own applications but none of the optional plugins.

    RabbitMQ scans every application in its plugins directory for boot steps at start-up; leaving
    out the ~50 optional plugins (management, MQTT, STOMP, ...) saves seconds on every (re)start.
    """
    target.mkdir(exist_ok=True)
    for app in RABBITMQ_APPS_DIR.iterdir():
        optional = app.name.startswith(("rabbitmq_", "amqp10_", "amqp_client")) and not (
            app.name.startswith("rabbitmq_prelaunch")
        )
        link = target / app.name
        if app.is_dir() and not optional and not link.exists():
            link.symlink_to(app)


def _port_taken(host: str, port: int) -> bool:
    try:
        return tcp_open(host, port)
    except OSError:
        return False


class RedisServer:
    """A Redis server on a free loopback port, nothing persisted."""

    def __init__(self, *, base_dir: Path, port: int | None = None) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.base_dir = base_dir
        self.url = f"redis://{self.host}:{self.port}/0"
        self._process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        return [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.base_dir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]

    def spawn(self) -> None:
        self._process = ManagedProcess(name="redis", argv=self.argv(), log_path=self.base_dir / "redis.log")
        self._process.spawn()

    def wait_ready(self) -> None:
        wait_until(lambda: redis_ping_ok(self.host, self.port), what="Redis", process=self._process)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process = None


def _postgres_bin(name: str) -> str:
    for directory in POSTGRES_BIN_DIRS:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"PostgreSQL's {name} is not installed (run `make setup`)")
    return found


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` system user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb) on a free loopback port, trust auth on loopback."""

    superuser = "postgres"

    def __init__(self, *, base_dir: Path) -> None:
        self.host = LOOPBACK
        self.port = free_port()
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "socket"
        self._process: ManagedProcess | None = None

    def admin_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def _prepare(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, user="postgres", group="postgres")
            shutil.chown(self.socket_dir, user="postgres", group="postgres")
        subprocess.run(  # noqa: S603
            _as_postgres_user(
                [
                    _postgres_bin("initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    self.superuser,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def spawn(self) -> None:
        self._prepare()
        self._process = ManagedProcess(
            name="postgres",
            argv=_as_postgres_user(
                [
                    _postgres_bin("postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    f"listen_addresses={self.host}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            log_path=self.base_dir / "postgres.log",
            cwd=self.base_dir,
        )
        self._process.spawn()

    def wait_ready(self) -> None:
        isready = _postgres_bin("pg_isready")

        def ready() -> bool:
            result = subprocess.run(  # noqa: S603
                [isready, "-h", self.host, "-p", str(self.port), "-U", self.superuser],
                capture_output=True,
                timeout=10,
                check=False,
            )
            return result.returncode == 0

        wait_until(ready, what="PostgreSQL", process=self._process)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def stop(self) -> None:
        if self._process is not None:
            # SIGINT is PostgreSQL's "fast shutdown"; SIGTERM of the group is fine for a test cluster.
            self._process.terminate()
            self._process = None


def run_psql(admin_dsn: str, sql: str) -> None:
    """Run one SQL statement as the superuser with psql (no Python driver needed)."""
    subprocess.run(  # noqa: S603
        [_postgres_bin("psql"), admin_dsn, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclass(frozen=True)
class LiveKitCredentials:
    api_key: str
    api_secret: str


def new_livekit_credentials() -> LiveKitCredentials:
    return LiveKitCredentials(api_key=f"APItest{secrets.token_hex(6)}", api_secret=secrets.token_urlsafe(48))


def livekit_config_yaml(
    *,
    bind_address: str,
    port: int,
    rtc_tcp_port: int,
    udp_range: tuple[int, int],
    node_ip: str,
    credentials: LiveKitCredentials,
    redis_address: str | None,
    redis_db: int = 0,
) -> str:
    """LiveKit's configuration for tests and local runs, obeying the network rule.

    No public STUN or TURN servers and no external-IP discovery, so neither the server nor its
    clients look beyond the machine; it binds and announces only `bind_address`/`node_ip`
    (loopback, or the address of a network namespace the test created). Redis is given so that
    the SIP APIs are available.
    """
    lines = [
        f"port: {port}",
        "bind_addresses:",
        f"  - {bind_address}",
        "log_level: info",
        "rtc:",
        f"  tcp_port: {rtc_tcp_port}",
        f"  port_range_start: {udp_range[0]}",
        f"  port_range_end: {udp_range[1]}",
        "  use_external_ip: false",
        f"  node_ip: {node_ip}",
        # LiveKit hands clients Google's public STUN servers when none are configured; name a
        # local address where nothing answers instead, so ICE stays on loopback/the namespace.
        "  stun_servers:",
        f"    - {node_ip}:{DEAD_STUN_PORT}",
        "  enable_loopback_candidate: true",
        "turn:",
        "  enabled: false",
        "keys:",
        f"  {credentials.api_key}: {credentials.api_secret}",
    ]
    if redis_address:
        lines += ["redis:", f"  address: {redis_address}", f"  db: {redis_db}"]
    return "\n".join(lines) + "\n"


_LIVEKIT_REDIS_DBS = itertools.count(1)
"""Each LiveKit server of a run gets a Redis database of its own: servers sharing one would form a
cluster and route a room to a node its clients cannot reach (loopback vs. namespace)."""


class LiveKitServer:
    """The pinned LiveKit server binary on free loopback ports (or a given namespace address)."""

    def __init__(
        self,
        *,
        base_dir: Path,
        redis_address: str | None,
        host: str = LOOPBACK,
        wrap: list[str] | None = None,
    ) -> None:
        """`host` is the address to bind and announce; `wrap` prefixes the command (a namespace)."""
        self.host = host
        self.port = free_port()
        self.rtc_tcp_port = free_port()
        self.udp_range = free_udp_port_range(20)
        self.base_dir = base_dir
        self.credentials = new_livekit_credentials()
        self.api_key = self.credentials.api_key
        self.api_secret = self.credentials.api_secret
        self.url = f"ws://{host}:{self.port}"
        self.http_url = f"http://{host}:{self.port}"
        self._wrap = wrap or []
        self._process: ManagedProcess | None = None
        self.config_path = base_dir / "livekit.yaml"
        self.config_path.write_text(
            livekit_config_yaml(
                bind_address=host,
                port=self.port,
                rtc_tcp_port=self.rtc_tcp_port,
                udp_range=self.udp_range,
                node_ip=host,
                credentials=self.credentials,
                redis_address=redis_address,
                redis_db=next(_LIVEKIT_REDIS_DBS),
            )
        )

    def spawn(self) -> None:
        if not LIVEKIT_BINARY.exists():
            raise ServerError(f"LiveKit server not found at {LIVEKIT_BINARY} (run `make setup`)")
        self._process = ManagedProcess(
            name="livekit",
            argv=[*self._wrap, str(LIVEKIT_BINARY), "--config", str(self.config_path)],
            log_path=self.base_dir / "livekit.log",
        )
        self._process.spawn()

    def wait_ready(self, *, probe: tuple[str, int] | None = None) -> None:
        """Wait for LiveKit's HTTP port; `probe` is where to reach it from here if not `host:port`."""
        host, port = probe or (self.host, self.port)
        wait_until(lambda: _http_ok(host, port), what="LiveKit", process=self._process)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def stop(self) -> None:
        if self._process is not None:
            # A graceful stop waits for participants to leave; tests do not need to wait.
            self._process.terminate(timeout=3.0)
            self._process = None


def _http_ok(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0) as sock:
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        sock.settimeout(2.0)
        return sock.recv(12).startswith(b"HTTP/1.")


def make_base_dir(prefix: str) -> Path:
    """A temp directory readable by service users (PostgreSQL runs as `postgres`)."""
    path = Path(tempfile.mkdtemp(prefix=f"agentline-{prefix}-"))
    path.chmod(0o755)
    return path
