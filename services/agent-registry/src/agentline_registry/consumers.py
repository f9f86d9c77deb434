"""Bus entry points: the look-up responder (`agent.get`, `agent.by_number`) and the session log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from agentline_common.agents import AgentConfig
from agentline_common.bus import Bus, HoldEvents, RpcFailure
from agentline_common.events import Event
from agentline_common.processed_events import RedisProcessedEvents
from agentline_common.rooms import is_e164
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentline_registry import service
from agentline_registry.metrics import RegistryMetrics

log = structlog.get_logger()

RPC_QUEUE = "rpc.agent-registry"
SESSIONS_QUEUE = "agent-registry.sessions"
SESSION_EVENTS = ("session.requested", "session.started", "session.ended")
SESSION_LOG_GATHER_SECONDS = 0.05
"""How long the session log waits for more events before writing a batch that is not full. A batch
pays its transaction, claim script and completion pipeline once, however many events it holds, so
under load a fuller batch costs far less per event; the call log is read by people, for whom 50 ms is
nothing."""


def parse_agent_id(params: dict[str, Any]) -> uuid.UUID:
    raw = params.get("id")
    if not isinstance(raw, str) or len(raw) > 64:
        raise RpcFailure("bad_request", "id: expected an agent UUID string")
    try:
        return uuid.UUID(raw)
    except ValueError as error:
        raise RpcFailure("bad_request", f"id: {raw[:40]!r} is not a UUID") from error


def parse_number(params: dict[str, Any]) -> str:
    raw = params.get("number")
    if not isinstance(raw, str) or not is_e164(raw):
        shown = raw[:32] if isinstance(raw, str) else type(raw).__name__
        raise RpcFailure("bad_request", f"number: {shown!r} is not an E.164 number")
    return raw


class LookupResponder:
    """Answers the agent look-ups from the database, each in its own short read transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], metrics: RegistryMetrics) -> None:
        self._sessions = sessions
        self._metrics = metrics

    @property
    def methods(self) -> dict[str, Any]:
        return {"agent.get": self.agent_get, "agent.by_number": self.agent_by_number}

    async def agent_get(self, params: dict[str, Any]) -> dict[str, Any]:
        agent_id = parse_agent_id(params)
        async with self._sessions() as db:
            agent = await service.lookup_agent(db, agent_id)
        return self._answer("agent.get", agent, f"no agent with id {agent_id}")

    async def agent_by_number(self, params: dict[str, Any]) -> dict[str, Any]:
        number = parse_number(params)
        async with self._sessions() as db:
            agent = await service.lookup_number(db, number)
        return self._answer("agent.by_number", agent, f"no agent has the number {number}")

    def _answer(self, method: str, agent: AgentConfig | None, missing: str) -> dict[str, Any]:
        if agent is None:
            self._metrics.lookups.labels(method=method, result="not_found").inc()
            raise RpcFailure("not_found", missing)
        self._metrics.lookups.labels(method=method, result="found").inc()
        return agent.model_dump(mode="json")


class SessionLog:
    """Consumes session.* into the call log: one transaction per batch of events, committed before
    any of them is acked, so a busy log writes once for many events instead of once per event."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def handle(self, events: Sequence[Event]) -> None:
        """A database that is down, or a write lock held past the statement bound (a migration, an
        operator's open transaction), says nothing against the events: they wait (HoldEvents)
        instead of spending deliveries until the dead-letter queue takes them."""
        try:
            async with self._sessions() as db:
                await service.record_session_events(db, events)
                await db.commit()
        except (OperationalError, PoolTimeout, OSError) as error:
            raise HoldEvents(f"the call log cannot be written now: {type(error).__name__}") from error


async def start_consumers(
    *,
    bus: Bus,
    queue_prefix: str,
    responder: LookupResponder,
    session_log: SessionLog,
    processed: RedisProcessedEvents,
) -> None:
    await bus.serve(queue=queue_prefix + RPC_QUEUE, methods=responder.methods)
    await bus.consume_batches(
        queue=queue_prefix + SESSIONS_QUEUE,
        routing_keys=SESSION_EVENTS,
        handler=session_log.handle,
        processed=processed,
        gather_seconds=SESSION_LOG_GATHER_SECONDS,
    )
