"""A whole test call with real media: token from the real token-service, the worker dispatched by
the real LiveKit server (inside a network namespace), a caller that hears the greeting, speaks a WAV
made by espeak-ng, and hears the answer; the session reaches the bus and the registry's call log.
Only the model server is fake."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentline_common.events import SessionEnded, SessionStarted
from agentline_common.testing.fake_openai import FakeOpenAI
from agentline_common.testing.servers import make_base_dir
from agentline_common.testing.services import (
    RegistryService,
    SessionEvents,
    Tenant,
    TokenServiceProcess,
    WorkerService,
)

pytestmark = pytest.mark.e2e

CALLER = Path(__file__).with_name("caller.py")
GREETING = "Hello, this is the Agentline test agent speaking."
USER_SAYS = "What are your opening hours?"
ANSWER = "We are open from nine in the morning to five in the evening."
GOODBYE = "Thank you for calling, goodbye."


def spoken_wav(directory: Path, text: str) -> Path:
    """`text` said by espeak-ng, as 48 kHz mono 16-bit (what the caller's microphone sends)."""
    raw, wav = directory / "speech-raw.wav", directory / "speech.wav"
    commands = [
        ["espeak-ng", "-w", str(raw), text],
        ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(wav)],
    ]
    for argv in commands:
        subprocess.run(argv, check=True, timeout=60)  # noqa: S603 - Debian's tools from PATH
    return wav


@pytest.fixture(scope="module")
def speech() -> Iterator[Path]:
    directory = make_base_dir("speech")
    try:
        yield spoken_wav(directory, USER_SAYS)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def netns_token_service(
    registry_service: RegistryService, livekit_netns: Any, netns_worker_service: WorkerService
) -> Iterator[TokenServiceProcess]:
    """The real token-service, minting for the namespaced LiveKit and our worker's agent name."""
    service = TokenServiceProcess(
        registry=registry_service,
        livekit_url=livekit_netns.host_url,
        livekit_api_key=livekit_netns.api_key,
        livekit_api_secret=livekit_netns.api_secret,
        base_dir=make_base_dir("token-service"),
        extra_env={"LIVEKIT_PUBLIC_URL": livekit_netns.url, "AGENT_NAME": netns_worker_service.agent_name},
    )
    try:
        service.start()
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.base_dir, ignore_errors=True)


async def new_test_call(
    registry: RegistryService, tokens: TokenServiceProcess
) -> tuple[Tenant, dict[str, Any]]:
    """A fresh agent that greets with GREETING, and a test-call token for it from the token-service."""
    tenant = registry.new_tenant(first_message=GREETING)
    # A fresh login: the user's token must name the organisation created after the first one.
    user_token = await asyncio.to_thread(registry.login, tenant.user.email, tenant.user.password)
    issued = await asyncio.to_thread(tokens.test_token, user_token, tenant.agent_id)
    return tenant, issued


def run_caller(
    livekit_netns: Any, *, url: str, token: str, wav: Path | None, until_agent_leaves: bool = False
) -> dict[str, Any]:
    args = [str(CALLER), "--url", url, "--token", token, "--timeout", "90"]
    if wav is not None:
        args += ["--wav", str(wav)]
    if until_agent_leaves:
        args.append("--until-agent-leaves")
    completed = livekit_netns.run_python(args, timeout=150)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


async def test_a_test_call_greets_hears_and_answers(
    netns_worker_service: WorkerService,
    netns_token_service: TokenServiceProcess,
    running_registry: RegistryService,
    worker_models: FakeOpenAI,
    session_events: SessionEvents,
    livekit_netns: Any,
    speech: Path,
) -> None:
    worker_models.hear(USER_SAYS)
    worker_models.reply(ANSWER)
    tenant, issued = await new_test_call(running_registry, netns_token_service)

    report = await asyncio.to_thread(
        run_caller, livekit_netns, url=issued["serverUrl"], token=issued["token"], wav=speech
    )

    assert report["error"] is None, report
    greeting, answer = report["greeting"], report["answer"]
    assert greeting["loud_frames"] > 25 and greeting["peak_rms"] > 2000  # > 0.5 s of sound
    assert answer["loud_frames"] > 25 and answer["started_at"] > report["speech_ended_at"]
    heard = worker_models.transcription_requests[-1].body
    assert heard["audio_seconds"] >= 1.0  # the caller's speech reached the STT
    asked = worker_models.chat_requests[-1].body["messages"]
    assert asked[-1] == {"role": "user", "content": USER_SAYS}
    assert {"role": "assistant", "content": GREETING} in asked
    spoken = [r.body["input"] for r in worker_models.speech_requests[-2:]]
    assert spoken == [GREETING, ANSWER]

    started = next(
        e for e in await wait_for_started(session_events, issued["roomName"]) if isinstance(e, SessionStarted)
    )
    assert started.agent_id == tenant.agent_id
    session_id: uuid.UUID = started.session_id  # type: ignore[assignment]
    ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
    assert ended.data.reason == "user_hangup"
    assert [(t.role, t.text) for t in ended.data.transcript] == [
        ("agent", GREETING),
        ("user", USER_SAYS),
        ("agent", ANSWER),
    ]
    assert len(ended.data.turns) == 1 and (ended.data.turns[0].latency_ms or 0) > 0
    logged = await asyncio.to_thread(
        running_registry.wait_for_session, tenant.token, session_id, status="ended"
    )
    assert logged["kind"] == "test" and logged["end_reason"] == "user_hangup"
    assert [entry["text"] for entry in logged["transcript"]] == [GREETING, USER_SAYS, ANSWER]


async def test_end_call_says_goodbye_and_the_agent_leaves_the_caller(
    netns_worker_service: WorkerService,
    netns_token_service: TokenServiceProcess,
    running_registry: RegistryService,
    worker_models: FakeOpenAI,
    session_events: SessionEvents,
    livekit_netns: Any,
    speech: Path,
) -> None:
    worker_models.hear(USER_SAYS)
    worker_models.reply_tool_call("end_call", {})
    worker_models.reply(GOODBYE)
    tenant, issued = await new_test_call(running_registry, netns_token_service)

    report = await asyncio.to_thread(
        run_caller,
        livekit_netns,
        url=issued["serverUrl"],
        token=issued["token"],
        wav=speech,
        until_agent_leaves=True,
    )

    assert report["error"] is None, report
    goodbye = report["answer"]
    assert goodbye is not None and goodbye["loud_frames"] > 25  # the goodbye was heard, then the agent left
    assert report["agent_left_at"] >= goodbye["ended_at"]
    started = next(
        e for e in await wait_for_started(session_events, issued["roomName"]) if isinstance(e, SessionStarted)
    )
    ended: SessionEnded = await session_events.wait_for(SessionEnded, started.session_id)  # type: ignore[arg-type]
    assert ended.data.reason == "end_call"
    assert [(t.role, t.text) for t in ended.data.transcript][-2:] == [("user", USER_SAYS), ("agent", GOODBYE)]
    logged = await asyncio.to_thread(
        running_registry.wait_for_session, tenant.token, started.session_id, status="ended"
    )
    assert logged["end_reason"] == "end_call"


async def wait_for_started(events: SessionEvents, room_name: str) -> list[Any]:
    async with asyncio.timeout(30):
        while True:
            found = [
                e for e in events.events if isinstance(e, SessionStarted) and e.data.room_name == room_name
            ]
            if found:
                return found
            await asyncio.sleep(0.1)
