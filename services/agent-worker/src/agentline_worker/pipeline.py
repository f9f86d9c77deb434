"""The voice pipeline of one call: an AgentSession built from the registry's AgentConfig.

Kept apart from the LiveKit job so that tests drive the very same session in text mode
(`session.run(user_input=...)`) against the fake model server, without a room.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from agentline_common.agents import AgentConfig
from agentline_common.events import EndReason, TranscriptEntry, TurnMetrics
from livekit.agents import (
    Agent,
    AgentSession,
    CloseEvent,
    ConversationItemAddedEvent,
    llm,
    vad,
)
from livekit.agents.llm import ChatMessage
from livekit.plugins import openai

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
    http: aiohttp.ClientSession,
    session_id: uuid.UUID | None,
    record: CallRecord,
) -> tuple[AgentSession[None], Agent]:
    """The AgentSession and Agent for one call of `config`, wired to `record`.

    Models go through livekit-plugins-openai against `settings.openai_base_url`, so OpenAI or any
    compatible server serves them. Turn detection is Silero VAD plus a fixed endpointing delay: no
    model download, no cloud inference.
    """
    base_url = settings.openai_base_url
    api_key = settings.openai_api_key.get_secret_value() or "unset"
    session: AgentSession[None] = AgentSession(
        stt=openai.STT(model=config.stt_model, language=config.language, base_url=base_url, api_key=api_key),
        llm=openai.LLM(
            model=config.llm_model,
            temperature=config.temperature,
            base_url=base_url,
            api_key=api_key,
        ),
        tts=openai.TTS(
            model=config.tts_model,
            voice=config.voice,
            response_format=TTS_FORMAT,
            base_url=base_url,
            api_key=api_key,
        ),
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
            secrets=settings.tool_secrets,
            agent_id=config.id,
            session_id=session_id,
        )
        for tool in config.tools
    ]
    tools.append(end_call_tool(record.mark_end_call))
    session.on("conversation_item_added", record.on_item_added)
    session.on("close", record.on_close)
    return session, ConfiguredAgent(config, tools=tools)
