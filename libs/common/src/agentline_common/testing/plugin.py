"""Pytest plugin: fixtures for the real RabbitMQ, Redis, PostgreSQL and LiveKit servers.

Loaded for every test run by the root pyproject (`-p agentline_common.testing.plugin`).

Where a server comes from, in this order:
1. a URL in the environment (`AGENTLINE_TEST_AMQP_URL`, `..._REDIS_URL`, `..._POSTGRES_URL`,
   `..._LIVEKIT_URL` with `..._LIVEKIT_API_KEY`/`..._LIVEKIT_API_SECRET`);
2. the locally installed server, started on free loopback ports in a temp dir.

A server starts only if some collected test needs it; all needed servers start in parallel as soon
as collection ends, so the run pays for the slowest one (RabbitMQ) once, not for the sum.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from agentline_common.bus import Bus
from agentline_common.testing.netns import NetworkNamespace
from agentline_common.testing.reaper import REAPER
from agentline_common.testing.servers import (
    LiveKitServer,
    PostgresServer,
    RabbitMQServer,
    RedisServer,
    ServerError,
    make_base_dir,
    run_psql,
)
from agentline_common.testing.settings import TestInfraSettings

if TYPE_CHECKING:
    # livekit is imported only when a test needs LiveKit in a namespace: it is slow to import.
    from agentline_common.testing.livekit import NamespacedLiveKit

RABBITMQ = "rabbitmq"
REDIS = "redis"
POSTGRES = "postgres"
LIVEKIT = "livekit"
LIVEKIT_NETNS = "livekit_netns"

# Which servers each fixture needs (the fixture closure of a test tells us what to start early).
FIXTURE_SERVERS: dict[str, tuple[str, ...]] = {
    "rabbitmq": (RABBITMQ,),
    "amqp_url": (RABBITMQ,),
    "bus": (RABBITMQ,),
    "redis_url": (REDIS,),
    "postgres_server": (POSTGRES,),
    "postgres_database": (POSTGRES,),
    "postgres_url": (POSTGRES,),
    "livekit_server": (LIVEKIT, REDIS),
    "livekit_netns": (LIVEKIT_NETNS, REDIS),
}


@dataclass
class ExternalRabbitMQ:
    """A broker someone else runs: usable, but the tests cannot restart it."""

    url: str

    def start(self) -> None:
        raise ServerError("cannot restart a broker given by AGENTLINE_TEST_AMQP_URL")

    def stop(self) -> None:
        raise ServerError("cannot stop a broker given by AGENTLINE_TEST_AMQP_URL")

    def close(self) -> None:
        """Nothing to clean up: the broker is not ours."""


@dataclass
class ExternalRedis:
    url: str

    def stop(self) -> None:
        """Not ours to stop."""


@dataclass
class ExternalPostgres:
    dsn: str

    def admin_dsn(self, database: str = "postgres") -> str:
        base, _, _ = self.dsn.rpartition("/")
        return f"{base}/{database}"

    def stop(self) -> None:
        """Not ours to stop."""


@dataclass
class ExternalLiveKit:
    url: str
    api_key: str
    api_secret: str

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    def stop(self) -> None:
        """Not ours to stop."""


class Infrastructure:
    """Starts each server at most once per run, in the background, and stops them all at the end."""

    def __init__(self, settings: TestInfraSettings) -> None:
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=6, thread_name_prefix="agentline-infra")
        self._futures: dict[str, Future[Any]] = {}
        self._started: list[Any] = []
        self._dirs: list[Path] = []
        self._lock = threading.Lock()
        self.startup_seconds: dict[str, float] = {}

    def ensure(self, name: str) -> Future[Any]:
        """The future of server `name`, starting it now if nobody asked for it before."""
        with self._lock:
            if name not in self._futures:
                self._futures[name] = self._executor.submit(self._start, name)
            return self._futures[name]

    def get(self, name: str) -> Any:
        return self.ensure(name).result()

    def _base_dir(self, prefix: str) -> Path:
        path = make_base_dir(prefix)
        self._dirs.append(path)
        return path

    def _start(self, name: str) -> Any:
        began = time.monotonic()
        server = self._build(name)
        start: Callable[[], None] | None = getattr(server, "start", None)
        if start is not None and not isinstance(server, ExternalRabbitMQ):
            start()
        with self._lock:
            self._started.append(server)
            self.startup_seconds[name] = time.monotonic() - began
        return server

    def _build(self, name: str) -> Any:
        settings = self._settings
        if name == RABBITMQ:
            if settings.amqp_url:
                return ExternalRabbitMQ(settings.amqp_url)
            return RabbitMQServer(base_dir=self._base_dir("rabbitmq"))
        if name == REDIS:
            if settings.redis_url:
                return ExternalRedis(settings.redis_url)
            return RedisServer(base_dir=self._base_dir("redis"))
        if name == POSTGRES:
            if settings.postgres_url:
                return ExternalPostgres(settings.postgres_url)
            return PostgresServer(base_dir=self._base_dir("postgres"))
        if name == LIVEKIT:
            if settings.livekit_url:
                return ExternalLiveKit(
                    url=settings.livekit_url,
                    api_key=settings.livekit_api_key,
                    api_secret=settings.livekit_api_secret.get_secret_value(),
                )
            redis = self.get(REDIS)
            redis_address = redis.url.removeprefix("redis://").split("/", 1)[0]
            return LiveKitServer(base_dir=self._base_dir("livekit"), redis_address=redis_address)
        if name == LIVEKIT_NETNS:
            from agentline_common.testing.livekit import NamespacedLiveKit

            redis_url = urlsplit(self.get(REDIS).url)
            loopback_redis = redis_url.hostname == "127.0.0.1" and redis_url.port is not None
            return NamespacedLiveKit(
                base_dir=self._base_dir("livekit-netns"),
                redis_port=redis_url.port if loopback_redis else None,
            )
        raise KeyError(name)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for server in reversed(self._started):
            stop = getattr(server, "close", None) or server.stop
            try:
                stop()
            except Exception as error:
                print(f"agentline: stopping {server!r} failed: {error}")
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


_INFRA_KEY = pytest.StashKey[Infrastructure]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_INFRA_KEY] = Infrastructure(TestInfraSettings())
    # A SIGTERM (e.g. from `timeout`) would end the run without teardown; as an interrupt, pytest
    # unwinds and the servers are stopped. A SIGKILL is the reaper's business.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start, in parallel, every server some collected test will need."""
    if session.config.option.collectonly:
        return
    needed: set[str] = set()
    for item in session.items:
        for fixture in getattr(item, "fixturenames", ()):
            needed.update(FIXTURE_SERVERS.get(fixture, ()))
    infra = session.config.stash[_INFRA_KEY]
    # LiveKit waits for Redis inside its own start, so order does not matter here.
    for name in sorted(needed):
        infra.ensure(name)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say how long each server took to start, since every test run pays for it."""
    infra = config.stash.get(_INFRA_KEY, None)
    if infra is not None and infra.startup_seconds:
        figures = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in infra.startup_seconds.items())
        terminalreporter.write_line(f"agentline test servers started: {figures}")


def pytest_unconfigure(config: pytest.Config) -> None:
    infra = config.stash.get(_INFRA_KEY, None)
    if infra is not None:
        infra.close()
    REAPER.close()


@pytest.fixture(scope="session")
def agentline_infra(request: pytest.FixtureRequest) -> Infrastructure:
    return request.config.stash[_INFRA_KEY]


@pytest.fixture(scope="session")
def rabbitmq(agentline_infra: Infrastructure) -> RabbitMQServer:
    """The broker: `.url`, `.stop()` and `.start()` (a restart keeps queues and persistent messages)."""
    server: RabbitMQServer = agentline_infra.get(RABBITMQ)
    return server


@pytest.fixture(scope="session")
def amqp_url(rabbitmq: RabbitMQServer) -> str:
    return rabbitmq.url


@pytest.fixture(scope="session")
def redis_url(agentline_infra: Infrastructure) -> str:
    url: str = agentline_infra.get(REDIS).url
    return url


@pytest.fixture(scope="session")
def postgres_server(agentline_infra: Infrastructure) -> PostgresServer:
    """The PostgreSQL cluster; most tests want `postgres_database` instead."""
    server: PostgresServer = agentline_infra.get(POSTGRES)
    return server


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test: a SQLAlchemy URL `postgresql+asyncpg://...`."""
    name = f"test_{secrets.token_hex(6)}"
    run_psql(postgres_server.admin_dsn(), f'CREATE DATABASE "{name}"')
    dsn = postgres_server.admin_dsn(name)
    yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    run_psql(postgres_server.admin_dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """Same as `postgres_database` (a fresh database per test), under the other name in use."""
    return postgres_database


@pytest.fixture(scope="session")
def livekit_server(agentline_infra: Infrastructure) -> LiveKitServer:
    """LiveKit on loopback: `.url` (ws://), `.http_url`, `.api_key`, `.api_secret` (>= 32 bytes).

    Runs with Redis (SIP APIs work), no STUN/TURN, loopback only: good for the server API and
    signalling. For media between clients use `livekit_netns`.
    """
    server: LiveKitServer = agentline_infra.get(LIVEKIT)
    return server


@pytest.fixture(scope="session")
def livekit_netns(agentline_infra: Infrastructure) -> NamespacedLiveKit:
    """LiveKit inside a network namespace of its own, for tests where media flows.

    `.url`/`.http_url` from inside the namespace, `.host_url`/`.host_http_url` from the host's
    loopback, `.api_key`/`.api_secret`, `.token(room=, identity=)`, `.namespace` (with
    `forward_into(port)` so processes inside reach host loopback services), `.run_python(args)`,
    `.popen_python(args)`, `.popen(argv)`, `.command(argv)`. Redis is forwarded in (SIP APIs work).
    """
    server: NamespacedLiveKit = agentline_infra.get(LIVEKIT_NETNS)
    return server


@pytest.fixture
def netns() -> Iterator[NetworkNamespace]:
    """A fresh network namespace (10.213.x.2 on a veth inside it), deleted with its processes."""
    with NetworkNamespace() as namespace:
        yield namespace


@pytest_asyncio.fixture(loop_scope="session")
async def bus(amqp_url: str) -> AsyncIterator[Bus]:
    """A connected Bus on an exchange of its own (unique per test), closed at teardown."""
    connected = Bus(amqp_url, exchange=f"test-{secrets.token_hex(6)}")
    await connected.connect()
    try:
        yield connected
    finally:
        await connected.close()
