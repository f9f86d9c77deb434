"""`make up`: runs the whole platform on this machine, on loopback, under one small supervisor.

Starts RabbitMQ, Redis and LiveKit (deploy/local/livekit.yaml), migrates and seeds the registry
(SQLite), then the four services, the fake model server when no OpenAI key is set, the nginx
gateway (deploy/local/nginx.conf, port 8080) and the console: a production build
(scripts/build-console.sh, made while the rest starts and reused while its sources stay the same),
never `next dev`, which asks the npm registry for updates. Prints every program's output with its
name in front, then the console URL and the demo login. Ctrl-C, SIGTERM or `make down` stops
everything in reverse order, also while it is still starting. State (broker data, SQLite, generated
secrets) lives in .local/.

A program whose console script or files are not there yet is left out with a note, so the stack
comes up with whatever parts exist.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentline_common.testing.servers import (
    LIVEKIT_BINARY,
    RabbitMQServer,
    RedisServer,
    amqp_handshake_ok,
    redis_ping_ok,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
PID_FILE = LOCAL / "run" / "supervisor.pid"
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"

AMQP_PORT, REDIS_PORT, LIVEKIT_PORT, EPMD_PORT = 5672, 6379, 7880, 4369
REGISTRY_PORT, TOKEN_PORT, TELEPHONY_PORT, WORKER_PORT = 8101, 8102, 8103, 8104
FAKE_MODELS_PORT, GATEWAY_PORT, CONSOLE_PORT = 8109, 8080, 3000


class LocalRunSettings(BaseSettings):
    """What the person running `make up` may set in the environment."""

    model_config = SettingsConfigDict(extra="ignore")

    openai_api_key: SecretStr = SecretStr("")
    """With a key, the worker talks to OpenAI (or OPENAI_BASE_URL); without, to the fake models."""
    openai_base_url: str = "https://api.openai.com/v1"
    demo_password: str = ""
    """A fixed demo password; empty: the registry makes a new one and it is printed."""


@dataclass
class Program:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    ready: Callable[[], bool] | None = None
    essential: bool = False
    """Infrastructure: if it dies, everything stops (the services would only fail one by one)."""
    process: asyncio.subprocess.Process | None = None


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            return bool(response.status < 500)

    return check


def write_private(path: Path, content: bytes) -> None:
    """Write a file that only its owner may read, from the first byte on (no chmod afterwards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    partial.replace(path)


def load_secrets() -> dict[str, str]:
    """Secrets for this clone's local run, made once and kept in .local/ (never committed)."""
    path = LOCAL / "secrets.env"
    if not path.exists():
        values = {
            "LIVEKIT_API_KEY": f"APIlocal{secrets.token_hex(6)}",
            "LIVEKIT_API_SECRET": secrets.token_urlsafe(48),
            "TWILIO_AUTH_TOKEN": secrets.token_hex(32),
        }
        write_private(path, "".join(f"{key}={value}\n" for key, value in values.items()).encode())
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def jwt_private_key_file() -> Path:
    """The registry's signing key: kept, so users stay logged in across restarts."""
    path = LOCAL / "jwt-private.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    return path


def console_script(name: str) -> str | None:
    return shutil.which(name, path=str(VENV_BIN))


def service_environment(secret: dict[str, str], settings: LocalRunSettings) -> dict[str, str]:
    """What every service gets: the shared infrastructure's URLs and credentials (architecture.md)."""
    fake_models = not settings.openai_api_key.get_secret_value()
    return {
        "ENVIRONMENT": "development",
        "LOG_FORMAT": "console",
        "AMQP_URL": f"amqp://guest:guest@{HOST}:{AMQP_PORT}/",
        "REDIS_URL": f"redis://{HOST}:{REDIS_PORT}/0",
        "LIVEKIT_URL": f"ws://{HOST}:{LIVEKIT_PORT}",
        "LIVEKIT_PUBLIC_URL": f"ws://{HOST}:{LIVEKIT_PORT}",
        "LIVEKIT_API_KEY": secret["LIVEKIT_API_KEY"],
        "LIVEKIT_API_SECRET": secret["LIVEKIT_API_SECRET"],
        "JWKS_URL": f"http://{HOST}:{REGISTRY_PORT}/.well-known/jwks.json",
        "DATABASE_URL": f"sqlite+aiosqlite:///{LOCAL / 'registry.db'}",
        "JWT_PRIVATE_KEY_FILE": str(jwt_private_key_file()),
        "TELEPHONY_DATABASE_URL": f"sqlite+aiosqlite:///{LOCAL / 'telephony.db'}",
        "TWILIO_AUTH_TOKEN": secret["TWILIO_AUTH_TOKEN"],
        "PUBLIC_BASE_URL": f"http://{HOST}:{GATEWAY_PORT}",
        "OPENAI_BASE_URL": (
            f"http://{HOST}:{FAKE_MODELS_PORT}/v1" if fake_models else settings.openai_base_url
        ),
        "OPENAI_API_KEY": ("fake-model-key" if fake_models else settings.openai_api_key.get_secret_value()),
        "HEALTH_PORT": str(WORKER_PORT),
    }


def livekit_config(*, api_key: str, node_ip: str | None) -> Path:
    """A copy of deploy/local/livekit.yaml in the state directory that names this clone's API key
    for signing webhooks and, given `node_ip`, announces it for media (LiveKit's --node-ip flag does
    not override the file's node_ip)."""
    source = ROOT / "deploy/local/livekit.yaml"
    text = source.read_text()

    def set_value(key: str, value: str) -> None:
        nonlocal text
        text, count = re.subn(rf"(?m)^(\s+{key}:).*$", lambda match: f"{match[1]} {value}", text)
        if count != 1:
            raise RuntimeError(f"{source} has {count} indented {key} lines, expected one")

    set_value("api_key", api_key)
    if node_ip is not None:
        set_value("node_ip", node_ip)
    path = LOCAL / "livekit.yaml"
    path.write_text(text)
    return path


def infrastructure(secret: dict[str, str], *, livekit_node_ip: str | None = None) -> list[Program]:
    (LOCAL / "redis").mkdir(parents=True, exist_ok=True)
    rabbitmq = RabbitMQServer(
        base_dir=LOCAL / "rabbitmq",
        port=AMQP_PORT,
        dist_port=25672,
        epmd_port=EPMD_PORT,
        node_name="agentline@localhost",
    )
    redis = RedisServer(base_dir=LOCAL / "redis", port=REDIS_PORT)
    livekit_keys = f"{secret['LIVEKIT_API_KEY']}: {secret['LIVEKIT_API_SECRET']}"
    return [
        Program(
            "rabbitmq",
            rabbitmq.argv(),
            env=rabbitmq.environment(),
            cwd=rabbitmq.base_dir,
            ready=lambda: amqp_handshake_ok(HOST, AMQP_PORT),
            essential=True,
        ),
        Program(
            "redis",
            redis.argv(),
            ready=lambda: redis_ping_ok(HOST, REDIS_PORT),
            essential=True,
        ),
        Program(
            "livekit",
            [
                str(LIVEKIT_BINARY),
                "--config",
                str(livekit_config(api_key=secret["LIVEKIT_API_KEY"], node_ip=livekit_node_ip)),
            ],
            env={"LIVEKIT_KEYS": livekit_keys},
            ready=http_ok(f"http://{HOST}:{LIVEKIT_PORT}/"),
            essential=True,
        ),
    ]


def services(env: dict[str, str], *, fake_models: bool) -> list[Program]:
    """The four services, the fake models and the gateway: add new parts here."""
    programs: list[Program] = []

    def add(script: str, program: Program) -> None:
        if console_script(script) is None:
            print(f"[up] {program.name}: `{script}` not installed yet, left out", flush=True)
            return
        programs.append(program)

    python = str(VENV_BIN / "python")
    if fake_models:
        programs.append(
            Program(
                "fake-models",
                [python, "-m", "agentline_common.testing.fake_openai", "--port", str(FAKE_MODELS_PORT)],
                ready=http_ok(f"http://{HOST}:{FAKE_MODELS_PORT}/v1/models"),
            )
        )
    add(
        "agentline-registry",
        Program(
            "registry",
            ["agentline-registry", "serve", "--port", str(REGISTRY_PORT)],
            env={**env, "SERVICE_NAME": "agent-registry", "PORT": str(REGISTRY_PORT)},
            ready=http_ok(f"http://{HOST}:{REGISTRY_PORT}/healthz"),
        ),
    )
    add(
        "agentline-token-service",
        Program(
            "token-service",
            ["agentline-token-service"],
            env={**env, "SERVICE_NAME": "token-service", "PORT": str(TOKEN_PORT)},
            ready=http_ok(f"http://{HOST}:{TOKEN_PORT}/healthz"),
        ),
    )
    add(
        "agentline-telephony",
        Program(
            "telephony",
            ["agentline-telephony", "serve"],
            env={**env, "SERVICE_NAME": "telephony-gateway", "PORT": str(TELEPHONY_PORT)},
            ready=http_ok(f"http://{HOST}:{TELEPHONY_PORT}/healthz"),
        ),
    )
    add(
        "agentline-worker",
        Program(
            "worker",
            ["agentline-worker"],
            env={**env, "SERVICE_NAME": "agent-worker"},
            ready=http_ok(f"http://{HOST}:{WORKER_PORT}/healthz"),
        ),
    )
    nginx_conf = ROOT / "deploy/local/nginx.conf"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if nginx_conf.exists() and Path(nginx).exists():
        prefix = LOCAL / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        programs.append(
            Program(
                "gateway",
                [nginx, "-p", str(prefix), "-c", str(nginx_conf), "-e", "stderr"],
                ready=lambda: port_in_use(GATEWAY_PORT),
            )
        )
    return programs


def console_wanted() -> bool:
    return (ROOT / "frontend/package.json").exists() and (ROOT / "frontend/node_modules").exists()


def console(server: Path) -> Program:
    """The console's production build (scripts/build-console.sh), served by its standalone server."""
    return Program(
        "console",
        [shutil.which("node") or "node", str(server)],
        env={
            "NODE_ENV": "production",
            "NEXT_TELEMETRY_DISABLED": "1",
            "HOSTNAME": HOST,
            "PORT": str(CONSOLE_PORT),
        },
        cwd=server.parent,
        ready=http_ok(f"http://{HOST}:{CONSOLE_PORT}/login"),
    )


def ports(*, fake_models: bool, console: bool) -> list[int]:
    """The TCP ports `make up` serves on, which nothing else may hold when it starts (Erlang's port
    mapper may: RabbitMQ shares a running one)."""
    wanted = [AMQP_PORT, REDIS_PORT, LIVEKIT_PORT, REGISTRY_PORT, TOKEN_PORT]
    wanted += [TELEPHONY_PORT, WORKER_PORT, GATEWAY_PORT]
    if fake_models:
        wanted.append(FAKE_MODELS_PORT)
    if console:
        wanted.append(CONSOLE_PORT)
    return wanted


async def stop_group(process: asyncio.subprocess.Process, *, grace: float) -> None:
    """SIGTERM the process group `process` leads; SIGKILL it if it has not exited after `grace` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class Supervisor:
    def __init__(self) -> None:
        self.running: list[Program] = []
        self.stopping = asyncio.Event()
        self.failed: str | None = None
        """Why everything is stopping when it is not a stop request: an essential program died."""
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self, program: Program, *, timeout: float = 120.0) -> None:
        program.process = await asyncio.create_subprocess_exec(
            *program.argv,
            cwd=program.cwd,
            env={**os.environ, **program.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append(program)
        self._relays.add(asyncio.create_task(self._relay(program)))
        if program.ready is None:
            return
        ready = program.ready
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if program.process.returncode is not None:
                raise RuntimeError(f"{program.name} exited with {program.process.returncode}")
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(ready):
                    print(f"[up] {program.name} ready", flush=True)
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{program.name} not ready after {timeout:.0f} s")

    async def _relay(self, program: Program) -> None:
        assert program.process is not None and program.process.stdout is not None
        async for line in program.process.stdout:
            text = line.decode(errors="replace").rstrip()
            print(f"[{program.name}] {text}", flush=True)
        code = await program.process.wait()
        if not self.stopping.is_set():
            print(f"[up] {program.name} exited with {code}", flush=True)
            if program.essential:
                self.failed = f"{program.name} exited with {code}"
                self.stopping.set()

    async def run_once(self, name: str, argv: list[str], env: dict[str, str], *, stream: bool = False) -> str:
        """Run a one-shot command (migration, seeding, the console's build); the last line of its
        output is returned. With `stream`, its stderr is printed as it comes and only its stdout is
        kept. Cancelled, it stops the command."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if stream else asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            if stream:
                assert process.stdout is not None and process.stderr is not None
                relay = asyncio.create_task(self._print_lines(name, process.stderr))
                output = await process.stdout.read()
                await relay
                await process.wait()
            else:
                output, _ = await process.communicate()
        finally:
            if process.returncode is None:
                await stop_group(process, grace=10)
        lines = output.decode(errors="replace").strip().splitlines()
        if process.returncode != 0:
            print("\n".join(f"[{name}] {line}" for line in lines), flush=True)
            raise RuntimeError(f"{name} failed with {process.returncode}")
        return lines[-1] if lines else ""

    @staticmethod
    async def _print_lines(name: str, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            print(f"[{name}] {line.decode(errors='replace').rstrip()}", flush=True)

    async def stop_all(self) -> None:
        self.stopping.set()
        for program in reversed(self.running):
            process = program.process
            if process is None or process.returncode is not None:
                continue
            await stop_group(process, grace=30)
            print(f"[up] {program.name} stopped", flush=True)
        if any(program.name == "rabbitmq" for program in self.running):
            # Erlang's port mapper daemonizes itself, outside the broker's process group.
            epmd = await asyncio.create_subprocess_exec(
                shutil.which("epmd") or "/usr/bin/epmd",
                "-port",
                str(EPMD_PORT),
                "-kill",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await epmd.wait()


async def start_everything(
    supervisor: Supervisor,
    settings: LocalRunSettings,
    *,
    secret: dict[str, str],
    livekit_node_ip: str | None,
    with_console: bool,
    ready_file: Path | None,
) -> None:
    """Start every program in order; the console is built meanwhile (minutes the first time)."""
    env = service_environment(secret, settings)
    fake_models = not settings.openai_api_key.get_secret_value()
    build = None
    if with_console:
        build = asyncio.create_task(
            supervisor.run_once("console-build", [str(ROOT / "scripts/build-console.sh")], {}, stream=True)
        )
    try:
        await asyncio.gather(
            *(supervisor.start(p) for p in infrastructure(secret, livekit_node_ip=livekit_node_ip))
        )
        login = None
        if console_script("agentline-registry"):
            await supervisor.run_once("registry-migrate", ["agentline-registry", "migrate"], env)
            seed = ["agentline-registry", "seed-demo"]
            if settings.demo_password:
                seed += ["--password", settings.demo_password]
            login = json.loads(await supervisor.run_once("registry-seed", seed, env))
        for program in services(env, fake_models=fake_models):
            await supervisor.start(program)
        if build is not None:
            if not build.done():
                print("[up] waiting for the console's build", flush=True)
            await supervisor.start(console(Path(await build)))
    finally:
        if build is not None:
            build.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await build
    print_banner(login, fake_models=fake_models)
    if ready_file is not None:
        # Written last and renamed into place, so a reader never sees half of it.
        partial = ready_file.with_suffix(".partial")
        partial.write_text(json.dumps(login or {}))
        partial.replace(ready_file)


async def main(
    settings: LocalRunSettings,
    *,
    livekit_node_ip: str | None = None,
    ready_file: Path | None = None,
    console: bool = True,
) -> int:
    fake_models = not settings.openai_api_key.get_secret_value()
    with_console = console and console_wanted()
    busy = [port for port in ports(fake_models=fake_models, console=with_console) if port_in_use(port)]
    if busy:
        print(f"[up] ports already in use: {busy} (is `make up` running? `make down` stops it)")
        return 1
    secret = load_secrets()
    supervisor = Supervisor()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stopping.set)
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(str(os.getpid()))
    startup = asyncio.create_task(
        start_everything(
            supervisor,
            settings,
            secret=secret,
            livekit_node_ip=livekit_node_ip,
            with_console=with_console,
            ready_file=ready_file,
        )
    )
    stop = asyncio.create_task(supervisor.stopping.wait())
    try:
        # A stop request (or an essential program's death) also ends a start-up still under way.
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():
            print("[up] stopping before everything started", flush=True)
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await startup
        else:
            startup.result()
            await stop
        if supervisor.failed:
            print(f"[up] FAILED: {supervisor.failed}", flush=True)
            return 1
        return 0
    except RuntimeError as error:
        print(f"[up] FAILED: {error}", flush=True)
        return 1
    finally:
        stop.cancel()
        await supervisor.stop_all()
        PID_FILE.unlink(missing_ok=True)


def print_banner(login: dict[str, str] | None, *, fake_models: bool) -> None:
    lines = [
        "",
        "Agentline is running.",
        f"  Console:  http://{HOST}:{GATEWAY_PORT}/",
        f"  API:      http://{HOST}:{GATEWAY_PORT}/api/v1",
        f"  LiveKit:  ws://{HOST}:{LIVEKIT_PORT}",
    ]
    if login:
        lines += [f"  Login:    {login['email']} / {login['password']}"]
    if fake_models:
        lines += ["  Models:   the offline fake model server (set OPENAI_API_KEY for real ones)"]
    lines += ["Stop with Ctrl-C or `make down`.", ""]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=LOCAL,
        help="where broker data, databases and secrets live (default: .local/)",
    )
    parser.add_argument(
        "--livekit-node-ip",
        help="the address LiveKit hands clients for media (default: livekit.yaml's 127.0.0.1); "
        "scripts/e2e-stack.sh passes its network namespace's address",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="written with the demo login as JSON once every program is ready",
    )
    parser.add_argument(
        "--no-console",
        action="store_true",
        help="leave the console out (its build and server)",
    )
    args = parser.parse_args()
    LOCAL = args.state_dir.resolve()
    PID_FILE = LOCAL / "run" / "supervisor.pid"
    sys.exit(
        asyncio.run(
            main(
                LocalRunSettings(),
                livekit_node_ip=args.livekit_node_ip,
                ready_file=args.ready_file,
                console=not args.no_console,
            )
        )
    )
