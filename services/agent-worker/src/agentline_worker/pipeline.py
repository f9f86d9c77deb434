"""The voice pipeline of one call: an AgentSession built from the registry's AgentConfig.

Kept apart from the LiveKit job so that tests drive the very same session in text mode
(`session.run(user_input=...)`) against the fake model server, without a room.
"""

from __future__ import annotations

import functools
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx2
import structlog
from agentline_common.agents import AgentConfig
from agentline_common.events import EndReason, TranscriptEntry, TurnMetrics
from livekit.agents import (
    Agent,
    AgentSession,
    CloseEvent,
    ConversationItemAddedEvent,
    llm,
    tokenize,
    vad,
)
from livekit.agents.llm import ChatMessage
from livekit.plugins import openai
from openai import AsyncClient

from agentline_worker.service import end_reason, transcript_entry, turn_metrics
from agentline_worker.settings import WorkerSettings
from agentline_worker.tools import end_call_tool, webhook_tool

log = structlog.get_logger()

TTS_FORMAT = "pcm"
"""Raw 24 kHz PCM from the speech endpoint: nothing to decode, the first bytes play at once."""


@dataclass
class CallRecord:
    """What a session said and how fast, collected from its events for `session.ended`."""

    started_at: float = field(default_factory=time.time)
    transcript: list[TranscriptEntry] = field(default_factory=list)
    turns: list[TurnMetrics] = field(default_factory=list)
    ended_by_tool: bool = False
    room_gone: bool = False
    close_reason: str | None = None
    error: str | None = None
    _last_user_metrics: dict[str, Any] | None = None

    def on_item_added(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, ChatMessage):
            return
        entry = transcript_entry(role=item.role, text=item.text_content, created_at=item.created_at)
        if entry is not None:
            self.transcript.append(entry)
        if item.role == "user":
            self._last_user_metrics = dict(item.metrics)
        elif item.role == "assistant":
            turn = turn_metrics(dict(item.metrics), self._last_user_metrics)
            if turn is not None:
                self.turns.append(turn)
                self._last_user_metrics = None

    def on_close(self, event: CloseEvent) -> None:
        self.close_reason = event.reason.value
        if event.error is not None:
            self.error = str(event.error)[:500]

    def mark_end_call(self) -> None:
        self.ended_by_tool = True

    @property
    def reason(self) -> EndReason:
        """The `session.ended` reason for how this session closed."""
        return end_reason(
            self.close_reason or "job_shutdown",
            ended_by_tool=self.ended_by_tool,
            room_gone=self.room_gone,
        )

    @property
    def duration_seconds(self) -> float:
        return round(time.time() - self.started_at, 3)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The CA bundle, loaded once per process and shared by every call's thread.

    Loading it blocks the event loop for 100-800 ms on a busy machine; the plugins' own clients
    did so three times per call (STT, LLM, TTS).
    """
    return httpx2.create_ssl_context()


def model_client(settings: WorkerSettings) -> AsyncClient:
    """One OpenAI client for a call's STT, LLM and TTS: one connection pool, one TLS context.

    Per call, not per process: httpx's pool belongs to the event loop of the call's thread. The
    caller closes it when the call ends (the plugins do not close a client they were given).
    """
    return AsyncClient(
        api_key=settings.openai_api_key.get_secret_value() or "unset",
        base_url=settings.openai_base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(
            verify=tls_context(),
            timeout=httpx2.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
            follow_redirects=True,
            limits=httpx2.Limits(max_connections=50, max_keepalive_connections=50, keepalive_expiry=120),
        ),
    )


def warm_up(settings: WorkerSettings) -> None:
    """Pay once per process what the first call would otherwise pay during its dispatch and greeting
    (together about 150 ms, seen in py-spy): the TLS context, the OpenAI resources the call uses
    (imported on first access), and the hyphenation table that the transcript synchronisation
    builds on its first word.
    """
    client = model_client(settings)  # no connection is opened, so there is nothing to close
    _ = (client.audio.transcriptions, client.audio.speech, client.chat.completions)
    tokenize.basic.hyphenate_word("warm")


class ConfiguredAgent(Agent):
    """The agent of the registry's config; it greets the caller as soon as the session starts."""

    def __init__(self, config: AgentConfig, *, tools: list[llm.Tool | llm.Toolset]) -> None:
        super().__init__(instructions=config.instructions, tools=tools)
        self._first_message = config.first_message

    async def on_enter(self) -> None:
        if self._first_message.strip():
            self.session.say(self._first_message)


def build_session(
    config: AgentConfig,
    *,
    settings: WorkerSettings,
    vad_model: vad.VAD | None,
    models: AsyncClient,
    http: aiohttp.ClientSession,
    session_id: uuid.UUID | None,
    record: CallRecord,
) -> tuple[AgentSession[None], Agent]:
    """The AgentSession and Agent for one call of `config`, wired to `record`.

    Models go through livekit-plugins-openai with `models` (see `model_client`), so OpenAI or any
    compatible server serves them. Turn detection is Silero VAD plus a fixed endpointing delay: no
    model download, no cloud inference.
    """
    session: AgentSession[None] = AgentSession(
        stt=openai.STT(model=config.stt_model, language=config.language, client=models),
        llm=openai.LLM(model=config.llm_model, temperature=config.temperature, client=models),
        tts=openai.TTS(model=config.tts_model, voice=config.voice, response_format=TTS_FORMAT, client=models),
        vad=vad_model,
        turn_handling={
            "turn_detection": "vad",
            "endpointing": {"mode": "fixed", "min_delay": settings.endpointing_delay_seconds},
            "interruption": {"mode": "vad"},
        },
        user_away_timeout=None,
    )
    tools: list[llm.Tool | llm.Toolset] = [
        webhook_tool(
            tool,
            http=http,
            allowed=settings.tool_allowed_networks,
            secrets=settings.tool_secrets.get(config.org_id, {}),
            agent_id=config.id,
            session_id=session_id,
        )
        for tool in config.tools
    ]
    tools.append(end_call_tool(record.mark_end_call))
    session.on("conversation_item_added", record.on_item_added)
    session.on("close", record.on_close)
    return session, ConfiguredAgent(config, tools=tools)
