"""Fixtures that run OUR services as real subprocesses, for other services' tests.

`registry_service` runs `agentline-registry migrate` and `agentline-registry serve` (the console script
of the workspace venv) on a free loopback port, with SQLite in a temp dir, on the session's broker and
Redis and on an exchange of its own (`.exchange`). Tests that talk to it over the bus make a Bus on
that exchange (or use the `registry_bus` fixture). Tests never import agentline_registry: they use
the HTTP API and the command line, as any other client would.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentline_common.bus import Bus
from agentline_common.events import Event
from agentline_common.testing.fake_openai import fake_openai  # noqa: F401 - a fixture, registered here
from agentline_common.testing.servers import (
    ManagedProcess,
    ServerError,
    child_environment,
    free_port,
    make_base_dir,
    wait_until,
)

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 60.0
TEST_PASSWORD_BYTES = 24


def registry_command() -> list[str]:
    """The registry's console script from this venv, or the module as a fallback."""
    script = shutil.which("agentline-registry", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "agentline_registry"]


class RegistryError(AssertionError):
    """A helper call to the registry failed; the message has the status and body."""


@dataclass(frozen=True)
class RegistryUser:
    user_id: uuid.UUID
    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Tenant:
    """An owner with an organisation and one agent (and its number, if asked for)."""

    user: RegistryUser
    org_id: uuid.UUID
    agent_id: uuid.UUID
    agent: dict[str, Any]
    number: str | None

    @property
    def token(self) -> str:
        return self.user.token

    @property
    def headers(self) -> dict[str, str]:
        return self.user.headers


@dataclass(kw_only=True)
class ServiceProcess:
    """One of our HTTP services run as a subprocess on a free loopback port, ready once /readyz is 200.

    Subclasses say how to run it (`name`, `argv()`) and with what (`environment`).
    """

    base_dir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    name = "agentline-service"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def log_path(self) -> Path:
        return self.base_dir / f"{self.name}.log"

    @property
    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until its /readyz says its dependencies are up."""
        if self.is_running:
            return
        self.process = ManagedProcess(
            name=self.name,
            argv=self.argv(),
            log_path=self.log_path,
            env=child_environment(self.environment),
            cwd=self.base_dir,
        )
        self.process.spawn()
        wait_until(self._ready, what=self.name, process=self.process, timeout=READY_TIMEOUT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); what it keeps on disk stays for the next start()."""
        if self.process is not None:
            self.process.terminate(timeout=15.0)
            self.process = None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.process is not None

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass(kw_only=True)
class RegistryService(ServiceProcess):
    """A running registry. `.url` is its base URL; the HTTP API lives under `.api_url`."""

    amqp_url: str
    redis_url: str
    exchange: str
    name = "agentline-registry"

    def argv(self) -> list[str]:
        return [*registry_command(), "serve"]

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.base_dir / 'registry.db'}"

    @property
    def environment(self) -> dict[str, str]:
        """What the registry runs with; other services under test want the same JWT settings."""
        return {
            "ENVIRONMENT": "test",
            "LOG_FORMAT": "json",
            "DATABASE_URL": self.database_url,
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
            "BUS_EXCHANGE": self.exchange,
            "QUEUE_PREFIX": f"{self.exchange}.",
            "HOST": LOOPBACK,
            "PORT": str(self.port),
            "JWT_PRIVATE_KEY_FILE": str(self.base_dir / "jwt-key.pem"),
            "JWKS_URL": self.jwks_url,
            "OUTBOX_POLL_SECONDS": "0.2",
        }

    def prepare(self) -> None:
        """Write the signing key (kept across restarts, so tokens stay valid) and migrate."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.base_dir / "jwt-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.cli("migrate")

    def cli(self, *args: str) -> dict[str, Any]:
        """Run `agentline-registry <args>` on this registry's database; its last line as JSON."""
        completed = subprocess.run(  # noqa: S603 - our own console script with our own arguments
            [*registry_command(), *args],
            env=child_environment(self.environment),
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if completed.returncode != 0:
            raise RegistryError(
                f"agentline-registry {' '.join(args)} exited {completed.returncode}: "
                f"{completed.stderr[-2000:]}"
            )
        lines = completed.stdout.strip().splitlines()
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    # HTTP helpers: each returns ids and raises RegistryError on an unexpected status.

    def request(
        self, method: str, path: str, *, token: str | None = None, expect: int = 200, **kwargs: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.request(method, f"{self.api_url}{path}", headers=headers, timeout=10.0, **kwargs)
        if response.status_code != expect:
            raise RegistryError(
                f"{method} {path}: expected {expect}, got {response.status_code}: {response.text[:1000]}"
            )
        return response.json() if response.content else None

    def login(self, email: str, password: str) -> str:
        body = self.request("POST", "/auth/login", json={"email": email, "password": password})
        token: str = body["access_token"]
        return token

    def create_user(self, *, email: str | None = None, password: str | None = None) -> RegistryUser:
        """A new user (through the command line, as an operator would), logged in."""
        email = email or f"user-{secrets.token_hex(6)}@example.test"
        password = password or secrets.token_urlsafe(TEST_PASSWORD_BYTES)
        created = self.cli("create-user", "--email", email, f"--password={password}")  # may start with "-"
        return RegistryUser(
            user_id=uuid.UUID(created["user_id"]),
            email=created["email"],
            password=password,
            token=self.login(created["email"], password),
        )

    def create_org(self, token: str, name: str | None = None) -> uuid.UUID:
        body = self.request(
            "POST", "/orgs", token=token, expect=201, json={"name": name or f"org {secrets.token_hex(4)}"}
        )
        return uuid.UUID(body["id"])

    def add_member(self, token: str, org_id: uuid.UUID, *, role: str = "member") -> RegistryUser:
        """A new user who is a `role` of the organisation, logged in."""
        email = f"member-{secrets.token_hex(6)}@example.test"
        password = secrets.token_urlsafe(TEST_PASSWORD_BYTES)
        body = self.request(
            "POST",
            f"/orgs/{org_id}/members",
            token=token,
            expect=201,
            json={"email": email, "password": password, "role": role},
        )
        return RegistryUser(
            user_id=uuid.UUID(body["user_id"]),
            email=email,
            password=password,
            token=self.login(email, password),
        )

    def create_agent(self, token: str, org_id: uuid.UUID, **fields: Any) -> dict[str, Any]:
        """Create an agent (AgentRead as a dict); `fields` override the defaults."""
        spec = {
            "name": f"agent {secrets.token_hex(4)}",
            "instructions": "You are a helpful test agent.",
            "first_message": "Hello from the test agent.",
            **fields,
        }
        agent: dict[str, Any] = self.request(
            "POST", f"/orgs/{org_id}/agents", token=token, expect=201, json=spec
        )
        return agent

    def assign_number(self, token: str, agent_id: uuid.UUID | str, number: str) -> None:
        self.request(
            "POST", f"/agents/{agent_id}/phone-numbers", token=token, expect=201, json={"number": number}
        )

    def set_active(self, token: str, agent_id: uuid.UUID | str, active: bool) -> dict[str, Any]:
        action = "activate" if active else "deactivate"
        agent: dict[str, Any] = self.request("POST", f"/agents/{agent_id}/{action}", token=token)
        return agent

    def get_session(self, token: str, session_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The call-log row of a session, or None while the registry has not recorded it."""
        headers = {"Authorization": f"Bearer {token}"}
        response = httpx.get(f"{self.api_url}/sessions/{session_id}", headers=headers, timeout=10.0)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"GET /sessions/{session_id}: {response.status_code} {response.text}")
        session: dict[str, Any] = response.json()
        return session

    def wait_for_session(
        self, token: str, session_id: uuid.UUID | str, *, status: str | None = None, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Poll the call log until the session is there (with `status`, if given)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            seen = self.get_session(token, session_id)
            if seen is not None and (status is None or seen["status"] == status):
                return seen
            time.sleep(0.1)
        raise RegistryError(f"session {session_id} not recorded with status {status!r}; last seen {seen}")

    def new_tenant(self, *, active: bool = True, number: str | None = None, **agent_fields: Any) -> Tenant:
        """A fresh owner, organisation and agent (optionally with `number`): one call per test."""
        user = self.create_user()
        org_id = self.create_org(user.token)
        agent = self.create_agent(user.token, org_id, active=active, **agent_fields)
        if number is not None:
            self.assign_number(user.token, agent["id"], number)
            agent = self.request("GET", f"/agents/{agent['id']}", token=user.token)
        return Tenant(
            user=user,
            org_id=org_id,
            agent_id=uuid.UUID(agent["id"]),
            agent=agent,
            number=number,
        )


def random_e164() -> str:
    """A random, valid E.164 number in the US test range (+1 555 01xx style), unique per call."""
    return f"+1555{secrets.randbelow(10**7):07d}"


@pytest.fixture(scope="session")
def registry_service(amqp_url: str, redis_url: str) -> Iterator[RegistryService]:
    """A real agent-registry subprocess for this test session (see RegistryService)."""
    service = RegistryService(
        amqp_url=amqp_url,
        redis_url=redis_url,
        exchange=f"test-registry-{secrets.token_hex(6)}",
        base_dir=make_base_dir("registry"),
    )
    try:
        service.prepare()
        service.start()
    except (ServerError, RegistryError):
        service.stop()
        raise
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.base_dir, ignore_errors=True)


@pytest.fixture
def running_registry(registry_service: RegistryService) -> RegistryService:
    """The session's registry, started again if an earlier test stopped it."""
    registry_service.start()
    return registry_service


@pytest_asyncio.fixture(loop_scope="session")
async def registry_bus(running_registry: RegistryService) -> AsyncIterator[Bus]:
    """A connected Bus on the registry's exchange (look-ups and session events reach it)."""
    connected = Bus(running_registry.amqp_url, exchange=running_registry.exchange)
    await connected.connect()
    try:
        yield connected
    finally:
        await connected.close()


# --- agent-worker -------------------------------------------------------------------------------


def worker_command() -> list[str]:
    """The worker's console script from this venv, or the module as a fallback."""
    script = shutil.which("agentline-worker", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "agentline_worker"]


@dataclass
class WorkerService:
    """A running agent-worker subprocess, dispatched by LiveKit under `.agent_name`.

    It talks to the given LiveKit server, to the registry's exchange for look-ups and session
    events, and to `models_url` (the fake model server) for STT/LLM/TTS. `wrap` prefixes the
    command (e.g. ``ip netns exec <ns>``) to run it inside a test's network namespace.
    """

    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str
    amqp_url: str
    redis_url: str
    exchange: str
    models_url: str
    models_api_key: str
    base_dir: Path
    agent_name: str = field(default_factory=lambda: f"test-agent-{secrets.token_hex(4)}")
    health_port: int = field(default_factory=free_port)
    wrap: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    health_host_port: int | None = None
    """Where the host reaches the health port, when the worker runs inside a namespace."""
    process: ManagedProcess | None = None

    @property
    def health_url(self) -> str:
        return f"http://{LOOPBACK}:{self.health_host_port or self.health_port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "worker.log"

    @property
    def environment(self) -> dict[str, str]:
        return {
            "ENVIRONMENT": "test",
            "LOG_FORMAT": "json",
            "AGENT_NAME": self.agent_name,
            "LIVEKIT_URL": self.livekit_url,
            "LIVEKIT_API_KEY": self.livekit_api_key,
            "LIVEKIT_API_SECRET": self.livekit_api_secret,
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
            "BUS_EXCHANGE": self.exchange,
            "QUEUE_PREFIX": f"{self.exchange}.",
            "OPENAI_BASE_URL": self.models_url,
            "OPENAI_API_KEY": self.models_api_key,
            "HEALTH_PORT": str(self.health_port),
            "MAX_SESSIONS": "20",
            "NUM_IDLE_PROCESSES": "1",
            "DRAIN_TIMEOUT_SECONDS": "120",
            **self.extra_env,
        }

    def start(self) -> None:
        """Start the worker and wait until it is registered with LiveKit and on the broker."""
        if self.is_running:
            return
        self.process = ManagedProcess(
            name="agentline-worker",
            argv=[*self.wrap, *worker_command()],
            log_path=self.log_path,
            env=child_environment(self.environment),
            cwd=self.base_dir,
        )
        self.process.spawn()
        wait_until(self.ready, what="agentline-worker", process=self.process, timeout=READY_TIMEOUT)

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.process is not None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.health_url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def readiness(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.health_url}/readyz", timeout=2.0).json()
        return body

    def send_sigterm(self) -> None:
        """SIGTERM to the worker alone (as Kubernetes does to a pod's main process): it drains."""
        assert self.process is not None and self.process.process is not None
        os.kill(self.process.process.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        """The worker's exit code, or None if it is still running after `timeout` seconds."""
        assert self.process is not None and self.process.process is not None
        try:
            return self.process.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate(timeout=30.0)
            self.process = None


def new_worker(
    *,
    livekit: Any,
    registry: RegistryService,
    models: Any,
    namespace: Any | None = None,
    extra_env: dict[str, str] | None = None,
) -> WorkerService:
    """A WorkerService (not started) on `livekit`, the registry's exchange and the `models` server.

    With `namespace` (a NetworkNamespace) the worker runs inside it, where WebRTC media flows; the
    broker, Redis and the model server are forwarded in at their loopback URLs, and its health port
    is exposed back on the host.
    """
    worker = WorkerService(
        livekit_url=livekit.url,
        livekit_api_key=livekit.api_key,
        livekit_api_secret=livekit.api_secret,
        amqp_url=registry.amqp_url,
        redis_url=registry.redis_url,
        exchange=registry.exchange,
        models_url=models.base_url,
        models_api_key=models.api_key or "",
        base_dir=make_base_dir("worker"),
        extra_env=extra_env or {},
    )
    if namespace is not None:
        for url in (registry.amqp_url, registry.redis_url, models.base_url):
            port = urlsplit(url).port
            assert port is not None, f"{url} names no port"
            try:
                namespace.forward_into(port)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise  # in use means forwarded already (LiveKit's Redis, say): fine
        worker.wrap = list(namespace.exec_prefix)
        worker.health_host_port = namespace.expose(worker.health_port, address=LOOPBACK)
    return worker


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def worker_models() -> AsyncIterator[Any]:
    """The fake model server the session's worker uses (a FakeOpenAI); tests script it."""
    from agentline_common.testing.fake_openai import FakeOpenAI

    async with FakeOpenAI(api_key=f"sk-fake-{secrets.token_hex(24)}") as server:
        yield server


@pytest.fixture(scope="session")
def worker_service(
    livekit_server: Any, registry_service: RegistryService, worker_models: Any
) -> Iterator[WorkerService]:
    """A real agent-worker subprocess for this test session, on the session's LiveKit server and
    the registry's exchange, with the fake model server `worker_models`."""
    service = new_worker(livekit=livekit_server, registry=registry_service, models=worker_models)
    try:
        service.start()
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def netns_worker_service(
    livekit_netns: Any, registry_service: RegistryService, worker_models: Any
) -> Iterator[WorkerService]:
    """An agent-worker inside `livekit_netns`'s namespace, so that it exchanges real media with
    callers there; otherwise like `worker_service`."""
    service = new_worker(
        livekit=livekit_netns,
        registry=registry_service,
        models=worker_models,
        namespace=livekit_netns.namespace,
    )
    try:
        service.start()
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.base_dir, ignore_errors=True)


SESSION_EVENT_WAIT = 30.0


class SessionEvents:
    """Every session.* event on the registry's exchange, for waiting on one in particular."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()

    async def on_event(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, event_type: type[Event], session_id: uuid.UUID) -> Any:
        def find() -> Event | None:
            return next(
                (e for e in self.events if isinstance(e, event_type) and e.session_id == session_id),
                None,
            )

        try:
            async with asyncio.timeout(SESSION_EVENT_WAIT), self._changed:
                await self._changed.wait_for(lambda: find() is not None)
        except TimeoutError:
            seen = [(e.type, str(e.session_id)) for e in self.events]
            raise AssertionError(f"no {event_type.__name__} for {session_id}; seen {seen}") from None
        return find()


@pytest_asyncio.fixture(loop_scope="session")
async def session_events(registry_bus: Bus) -> SessionEvents:
    """Every session.* event on the registry's exchange from now on (see SessionEvents)."""
    events = SessionEvents()
    await registry_bus.subscribe(routing_keys=["session.*"], handler=events.on_event)
    return events


# token-service ------------------------------------------------------------------------------------


def token_service_command() -> list[str]:
    """The token-service's console script from this venv, or the module as a fallback."""
    script = shutil.which("agentline-token-service", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "agentline_token_service"]


@dataclass(kw_only=True)
class TokenServiceProcess(ServiceProcess):
    """A running token-service on the registry's exchange and keys, minting for one LiveKit server.

    `.test_token(user_token, agent_id)` asks for a test-call token as the console does;
    `extra_env` overrides settings (e.g. `RATE_LIMIT_REQUESTS`, `AGENT_NAME`) before `start()`.
    """

    registry: RegistryService
    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str
    extra_env: dict[str, str] = field(default_factory=dict)
    name = "agentline-token-service"

    def argv(self) -> list[str]:
        return token_service_command()

    @property
    def webhook_url(self) -> str:
        return f"{self.api_url}/livekit/webhook"

    @property
    def environment(self) -> dict[str, str]:
        return {
            "ENVIRONMENT": "test",
            "LOG_FORMAT": "json",
            "AMQP_URL": self.registry.amqp_url,
            "REDIS_URL": self.registry.redis_url,
            "BUS_EXCHANGE": self.registry.exchange,
            "JWKS_URL": self.registry.jwks_url,
            "LIVEKIT_URL": self.livekit_url,
            "LIVEKIT_API_KEY": self.livekit_api_key,
            "LIVEKIT_API_SECRET": self.livekit_api_secret,
            "HOST": LOOPBACK,
            "PORT": str(self.port),
            "RATE_LIMIT_REQUESTS": "1000",
            **self.extra_env,
        }

    def test_token(self, user_token: str, agent_id: uuid.UUID | str, *, expect: int = 200) -> dict[str, Any]:
        """POST /agents/{agent_id}/test-token: {token, serverUrl, roomName, expiresAt} (or the error)."""
        response = httpx.post(
            f"{self.api_url}/agents/{agent_id}/test-token",
            headers={"Authorization": f"Bearer {user_token}"},
            timeout=10.0,
        )
        if response.status_code != expect:
            raise RegistryError(f"test-token: expected {expect}, got {response.status_code}: {response.text}")
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="session")
def token_service(registry_service: RegistryService, livekit_server: Any) -> Iterator[TokenServiceProcess]:
    """A real token-service subprocess on the session's registry and LiveKit server."""
    service = TokenServiceProcess(
        registry=registry_service,
        livekit_url=livekit_server.url,
        livekit_api_key=livekit_server.api_key,
        livekit_api_secret=livekit_server.api_secret,
        base_dir=make_base_dir("token-service"),
    )
    try:
        service.start()
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.base_dir, ignore_errors=True)
