"""The bus entry points on the real broker: the session log consumer and the look-up responder."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from agentline_common.bus import RpcFailure
from agentline_common.events import (
    Event,
    SessionEnded,
    SessionEndedData,
    SessionRequested,
    SessionRequestedData,
    SessionStarted,
    SessionStartedData,
    TranscriptEntry,
)
from agentline_common.rooms import new_test_room
from agentline_registry import repository, service
from agentline_registry.schemas import AgentCreate
from agentline_registry.tables import CallSession

from .conftest import AppFactory, RunningApp

pytestmark = pytest.mark.integration


def _number() -> str:
    return f"+1555{secrets.randbelow(10**7):07d}"


async def _agent(app: RunningApp, number: str | None = None) -> tuple[uuid.UUID, uuid.UUID]:
    async with app.runtime.sessions() as session:
        user = await service.create_user(
            session, email=f"{uuid.uuid4().hex[:12]}@example.test", password="long-password"
        )
        org = await service.create_org(session, owner=user.id, name="Org")
        agent = await service.create_agent(session, actor=None, org_id=org.id, spec=AgentCreate(name="a"))
        if number is not None:
            await service.assign_number(session, actor=None, agent_id=agent.id, number=number)
        await session.commit()
    return org.id, agent.id


async def _wait_for(
    app: RunningApp, session_id: uuid.UUID, status: str, timeout: float = 10.0
) -> CallSession:
    deadline = time.monotonic() + timeout
    row: CallSession | None = None
    while time.monotonic() < deadline:
        async with app.runtime.sessions() as db:
            row = await repository.get_session(db, session_id)
        if row is not None and row.status == status:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} not {status}: {row}")


async def test_events_out_of_order_and_duplicated_end_in_one_complete_row(
    registry: RunningApp,
) -> None:
    org_id, agent_id = await _agent(registry)
    session_id = uuid.uuid4()
    room = new_test_room(agent_id).name
    now = datetime.now(UTC)
    ids = {"session_id": session_id, "agent_id": agent_id, "org_id": org_id}
    requested = SessionRequested(
        occurred_at=now,
        data=SessionRequestedData(kind="test", room_name=room, expires_at=now + timedelta(minutes=10)),
        **ids,
    )
    started = SessionStarted(
        occurred_at=now + timedelta(seconds=1),
        data=SessionStartedData(room_name=room, worker="w1", job="j1"),
        **ids,
    )
    ended = SessionEnded(
        occurred_at=now + timedelta(seconds=30),
        data=SessionEndedData(
            reason="end_call",
            duration_seconds=29.0,
            transcript=[TranscriptEntry(role="user", text="bye", at=now + timedelta(seconds=29))],
        ),
        **ids,
    )
    events: list[Event] = [ended, started, ended, requested]
    for event in events:
        await registry.runtime.bus.publish(event)

    row = await _wait_for(registry, session_id, "ended")
    async with asyncio.timeout(10):
        while row.requested_at is None or row.started_at is None:  # the later events land too
            await asyncio.sleep(0.05)
            row = await _wait_for(registry, session_id, "ended")
    assert row.kind == "test"
    assert row.requested_at == now
    assert row.started_at == now + timedelta(seconds=1)
    assert row.end_reason == "end_call"
    assert [entry["text"] for entry in row.transcript] == ["bye"]


async def test_a_session_never_started_expires(app_factory: AppFactory) -> None:
    async with app_factory(session_sweep_interval_seconds=0.2) as app:
        org_id, agent_id = await _agent(app)
        session_id = uuid.uuid4()
        soon = datetime.now(UTC) + timedelta(seconds=3)  # time to see it `requested` first
        await app.runtime.bus.publish(
            SessionRequested(
                session_id=session_id,
                agent_id=agent_id,
                org_id=org_id,
                data=SessionRequestedData(
                    kind="test", room_name=new_test_room(agent_id).name, expires_at=soon
                ),
            )
        )
        await _wait_for(app, session_id, "requested")
        row = await _wait_for(app, session_id, "expired")
        assert row.end_reason == "expired"


async def test_lookups_answer_config_not_found_and_bad_request(registry: RunningApp) -> None:
    number = _number()
    org_id, agent_id = await _agent(registry, number)
    bus = registry.runtime.bus
    by_id = await bus.request("agent.get", {"id": str(agent_id)})
    by_number = await bus.request("agent.by_number", {"number": number})
    assert by_id == by_number
    assert by_id["org_id"] == str(org_id) and by_id["active"] is True
    for method, params, code in [
        ("agent.get", {"id": str(uuid.uuid4())}, "not_found"),
        ("agent.by_number", {"number": _number()}, "not_found"),
        ("agent.get", {"id": 42}, "bad_request"),
        ("agent.get", {}, "bad_request"),
        ("agent.by_number", {"number": "555"}, "bad_request"),
    ]:
        with pytest.raises(RpcFailure) as failure:
            await bus.request(method, params)
        assert failure.value.code == code, (method, params)


async def test_a_burst_of_events_lands_in_batches_each_applied_once(registry: RunningApp) -> None:
    org_id, agent_id = await _agent(registry)
    now = datetime.now(UTC)
    events: list[Event] = []
    session_ids = [uuid.uuid4() for _ in range(40)]
    for session_id in session_ids:
        ids = {"session_id": session_id, "agent_id": agent_id, "org_id": org_id}
        room = new_test_room(agent_id).name
        ended = SessionEnded(
            occurred_at=now + timedelta(seconds=9), data=SessionEndedData(reason="completed"), **ids
        )
        events += [
            ended,
            SessionRequested(
                occurred_at=now,
                data=SessionRequestedData(
                    kind="test", room_name=room, expires_at=now + timedelta(minutes=10)
                ),
                **ids,
            ),
            SessionStarted(
                occurred_at=now + timedelta(seconds=1),
                data=SessionStartedData(room_name=room, worker="w", job="j"),
                **ids,
            ),
            ended,
        ]
    await asyncio.gather(*(registry.runtime.bus.publish(event) for event in events))

    expected = ("ended", "test", now, now + timedelta(seconds=1), "completed")
    deadline = time.monotonic() + 10
    while True:
        async with registry.runtime.sessions() as db:
            rows = await repository.session_records(db, set(session_ids))
        fields = ("status", "kind", "requested_at", "started_at", "end_reason")
        seen = {session_id: tuple(row[field] for field in fields) for session_id, row in rows.items()}
        if seen == dict.fromkeys(session_ids, expected) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert seen == dict.fromkeys(session_ids, expected)
