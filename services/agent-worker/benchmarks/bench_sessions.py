"""Calls through the whole stack, with real media: dispatch latency, turn overhead, memory per call.

Everything real but the models: RabbitMQ, Redis, the registry, the token-service, LiveKit (inside a
network namespace, as media needs), the worker (inside it too), and callers (tests/caller.py, inside
it) that hear the greeting and speak a WAV made by espeak-ng. The fake model server answers at once,
so what is measured is the platform's own overhead.

- dispatch latency: token issued -> the agent joined the caller's room, that is its connection to
  the room is up (the moment the worker logs `call.joined`; one clock, the machine's); also
  printed: token issued -> the caller sees the agent, which adds the agent publishing its audio
  track and LiveKit telling the caller (caller process started beforehand, so Python's start-up
  is not counted);
- turn overhead: end of the caller's speech -> first audible agent frame, minus the configured
  end-of-speech silence (VAD silence + endpointing delay), which is a setting, not overhead;
- memory: the worker's resident memory with 10 calls at once, per call, above the idle worker.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from agentline_common.logging import configure_logging
from agentline_common.testing.bench import percentile, record
from agentline_common.testing.fake_openai import FakeOpenAI
from agentline_common.testing.livekit import NamespacedLiveKit
from agentline_common.testing.servers import RabbitMQServer, RedisServer, make_base_dir
from agentline_common.testing.services import (
    RegistryService,
    TokenServiceProcess,
    WorkerService,
    new_worker,
)

CALLER = Path(__file__).resolve().parent.parent / "tests" / "caller.py"
SESSIONS = 20
CONCURRENT = 10
END_OF_SPEECH_SECONDS = 0.35 + 0.2  # the worker's VAD_SILENCE_SECONDS + ENDPOINTING_DELAY_SECONDS
GOAL_DISPATCH_P95_MS = 500.0
GOAL_TURN_P50_MS = 300.0
GOAL_MB_PER_SESSION = 150.0
USER_SAYS = "What time do you open tomorrow?"


def speech(directory: Path) -> Path:
    raw, wav = directory / "raw.wav", directory / "speech.wav"
    for argv in (
        ["espeak-ng", "-w", str(raw), USER_SAYS],
        ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(wav)],
    ):
        subprocess.run(argv, check=True, timeout=60)  # noqa: S603 - Debian's tools from PATH
    return wav


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class Caller:
    """One caller process inside the namespace, started before its token exists."""

    def __init__(self, livekit: NamespacedLiveKit, url: str, *, wav: Path | None, hold: float) -> None:
        args = [str(CALLER), "--url", url, "--token", "-", "--timeout", "120", "--hold", str(hold)]
        if wav is not None:
            args += ["--wav", str(wav)]
        self.process = livekit.popen_python(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )

    def give_token(self, token: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(token + "\n")
        self.process.stdin.flush()

    def report(self) -> dict[str, Any]:
        out, _ = self.process.communicate(timeout=180)
        lines = out.strip().splitlines()
        if not lines:
            raise RuntimeError(f"caller exited {self.process.returncode} without a report")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


@dataclass(frozen=True)
class CallTimes:
    """One call's figures, in ms."""

    dispatch: float  # token issued -> the agent's connection to the room is up
    seen_by_caller: float  # token issued -> the caller sees the agent (its audio track)
    caller_join: float  # token issued -> the caller's own connection is up
    turn_overhead: float


def agent_joined_at(worker_log: Path, room: str) -> float:
    """When the worker's agent joined `room` (Unix seconds), from its `call.joined` log line."""
    for line in worker_log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "call.joined" and entry.get("room") == room:
            return datetime.fromisoformat(entry["timestamp"]).timestamp()
    raise RuntimeError(f"the worker never logged call.joined for {room}")


async def one_call(
    livekit: NamespacedLiveKit,
    tokens: TokenServiceProcess,
    models: FakeOpenAI,
    worker: WorkerService,
    *,
    user_token: str,
    agent_id: str,
    wav: Path,
) -> CallTimes:
    caller = Caller(livekit, livekit.url, wav=wav, hold=0.0)
    await asyncio.sleep(2.0)  # the caller imports livekit meanwhile
    models.hear(USER_SAYS)
    models.reply("Nine.")
    issued = await asyncio.to_thread(tokens.test_token, user_token, agent_id)
    issued_at, issued_at_unix = time.monotonic(), time.time()
    caller.give_token(issued["token"])
    report = await asyncio.to_thread(caller.report)
    if report["error"]:
        raise RuntimeError(f"call failed: {report['error']}")
    joined_at = agent_joined_at(worker.log_path, issued["roomName"])
    return CallTimes(
        dispatch=(joined_at - issued_at_unix) * 1000,
        seen_by_caller=(report["agent_joined_at"] - issued_at) * 1000,
        caller_join=(report["connected_at"] - issued_at) * 1000,
        turn_overhead=(report["answer"]["started_at"] - report["speech_ended_at"] - END_OF_SPEECH_SECONDS)
        * 1000,
    )


async def concurrent_memory(
    livekit: NamespacedLiveKit,
    tokens: TokenServiceProcess,
    worker: WorkerService,
    *,
    user_token: str,
    agent_id: str,
) -> tuple[float, float]:
    """(MB per call above idle, total MB / calls) with CONCURRENT calls in progress."""
    assert worker.process is not None and worker.process.process is not None
    pid = worker.process.process.pid
    idle = tree_rss_mb(pid)
    callers = [Caller(livekit, livekit.url, wav=None, hold=20.0) for _ in range(CONCURRENT)]
    await asyncio.sleep(3.0)
    for caller in callers:
        issued = await asyncio.to_thread(tokens.test_token, user_token, agent_id)
        caller.give_token(issued["token"])
    peak = idle
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=worker.health_url, timeout=2) as health:
        while time.monotonic() < deadline:
            metrics = (await health.get("/metrics")).text
            active = next(
                int(float(line.split()[1]))
                for line in metrics.splitlines()
                if line.startswith("agentline_worker_sessions_active ")
            )
            peak = max(peak, tree_rss_mb(pid))
            if active >= CONCURRENT:
                await asyncio.sleep(5)  # the greetings play; every pipeline is fully up
                peak = max(peak, tree_rss_mb(pid))
                break
            await asyncio.sleep(0.5)
    for caller in callers:
        await asyncio.to_thread(caller.report)
    return (peak - idle) / CONCURRENT, peak / CONCURRENT


async def run() -> list[dict[str, Any]]:
    configure_logging(service="bench", json=False, level="WARNING")
    broker = RabbitMQServer(base_dir=make_base_dir("bench-rabbitmq"))
    redis = RedisServer(base_dir=make_base_dir("bench-redis"))
    await asyncio.gather(asyncio.to_thread(broker.start), asyncio.to_thread(redis.start))
    redis_port = int(redis.url.rsplit(":", 1)[1].split("/")[0])
    livekit = NamespacedLiveKit(base_dir=make_base_dir("bench-livekit"), redis_port=redis_port)
    registry = RegistryService(
        amqp_url=broker.url,
        redis_url=redis.url,
        exchange="bench-sessions",
        base_dir=make_base_dir("bench-registry"),
    )
    directory = make_base_dir("bench-speech")
    models = FakeOpenAI(api_key="sk-bench-" + "x" * 40)
    worker: WorkerService | None = None
    tokens: TokenServiceProcess | None = None
    try:
        await models.start()
        await asyncio.to_thread(livekit.start)
        await asyncio.to_thread(registry.prepare)
        await asyncio.to_thread(registry.start)
        worker = new_worker(livekit=livekit, registry=registry, models=models, namespace=livekit.namespace)
        await asyncio.to_thread(worker.start)
        tokens = TokenServiceProcess(
            registry=registry,
            livekit_url=livekit.host_url,
            livekit_api_key=livekit.api_key,
            livekit_api_secret=livekit.api_secret,
            base_dir=make_base_dir("bench-token-service"),
            extra_env={"LIVEKIT_PUBLIC_URL": livekit.url, "AGENT_NAME": worker.agent_name},
        )
        await asyncio.to_thread(tokens.start)
        tenant = await asyncio.to_thread(registry.new_tenant, first_message="Hello.")
        user_token = await asyncio.to_thread(registry.login, tenant.user.email, tenant.user.password)
        wav = await asyncio.to_thread(speech, directory)
        calls: list[CallTimes] = []
        for _ in range(SESSIONS):
            call = await one_call(
                livekit, tokens, models, worker, user_token=user_token, agent_id=str(tenant.agent_id), wav=wav
            )
            calls.append(call)
            print(
                f"  call: dispatch {call.dispatch:.0f} ms (the caller sees the agent at"
                f" {call.seen_by_caller:.0f} ms), turn overhead {call.turn_overhead:.0f} ms",
                file=sys.stderr,
            )
        per_session_mb, total_per_session_mb = await concurrent_memory(
            livekit, tokens, worker, user_token=user_token, agent_id=str(tenant.agent_id)
        )
    finally:
        for service in (tokens, worker):
            if service is not None:
                await asyncio.to_thread(service.stop)
                shutil.rmtree(service.base_dir, ignore_errors=True)
        await asyncio.to_thread(registry.stop)
        await asyncio.to_thread(livekit.stop)
        await models.stop()
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(broker.close)
        for path in (redis.base_dir, registry.base_dir, directory):
            shutil.rmtree(path, ignore_errors=True)
    dispatch = [call.dispatch for call in calls]
    overhead = [call.turn_overhead for call in calls]
    dispatch_p95, overhead_p50 = percentile(dispatch, 0.95), percentile(overhead, 0.5)
    seen = [call.seen_by_caller for call in calls]
    caller_join = [call.caller_join for call in calls]
    return [
        record("worker.dispatch.p50", percentile(dispatch, 0.5), "ms"),
        record(
            "worker.dispatch.p95",
            dispatch_p95,
            "ms",
            goal=f"< {GOAL_DISPATCH_P95_MS:g} ms",
            met=dispatch_p95 < GOAL_DISPATCH_P95_MS,
        ),
        record(
            "worker.turn_overhead.p50",
            overhead_p50,
            "ms",
            goal=f"< {GOAL_TURN_P50_MS:g} ms",
            met=overhead_p50 < GOAL_TURN_P50_MS,
        ),
        record("worker.dispatch.seen_by_caller.p50", percentile(seen, 0.5), "ms"),
        record("worker.dispatch.seen_by_caller.p95", percentile(seen, 0.95), "ms"),
        record("worker.dispatch.caller_join.p50", percentile(caller_join, 0.5), "ms"),
        record("worker.turn_overhead.p95", percentile(overhead, 0.95), "ms"),
        record(
            "worker.memory_per_session",
            per_session_mb,
            "MB",
            goal=f"< {GOAL_MB_PER_SESSION:g} MB ({CONCURRENT} at once)",
            met=per_session_mb < GOAL_MB_PER_SESSION,
        ),
        record("worker.memory_total_over_sessions", total_per_session_mb, "MB"),
    ]


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row, file=sys.stdout)
