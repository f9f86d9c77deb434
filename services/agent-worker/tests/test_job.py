"""The worker as a process, dispatched by a real LiveKit server, looking agents up in the real
registry and reporting on the real broker. Signalling only (loopback): no media is needed here."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from agentline_common.events import SessionEnded, SessionStarted, phone_session_id
from agentline_common.rooms import LIVEKIT_GUID_ALPHABET, new_test_room
from agentline_common.testing.services import (
    RegistryService,
    SessionEvents,
    WorkerService,
    random_e164,
)
from agentline_worker.service import SIP_CALL_SID, SIP_TRUNK_NUMBER
from livekit import api, rtc

pytestmark = pytest.mark.integration

EVENT_WAIT = 30.0


@pytest_asyncio.fixture(loop_scope="session")
async def livekit_api(livekit_server: Any) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret)
    try:
        yield client
    finally:
        await client.aclose()


def phone_room(number: str) -> str:
    suffix = "".join(secrets.choice(LIVEKIT_GUID_ALPHABET) for _ in range(12))
    return f"call_{number}_{suffix}"


async def join_as_caller(livekit_server: Any, room_name: str, attributes: dict[str, str]) -> rtc.Room:
    token = (
        api.AccessToken(livekit_server.api_key, livekit_server.api_secret)
        .with_identity(f"caller-{secrets.token_hex(4)}")
        .with_attributes(attributes)
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .to_jwt()
    )
    room = rtc.Room()
    await room.connect(livekit_server.url, token)
    return room


async def dispatch(livekit_api: api.LiveKitAPI, worker: WorkerService, room: str, metadata: str = "") -> None:
    await livekit_api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=worker.agent_name, room=room, metadata=metadata)
    )


async def wait_for_agent_to_leave(livekit_api: api.LiveKitAPI, room: str) -> None:
    async with asyncio.timeout(EVENT_WAIT):
        while True:
            listed = await livekit_api.room.list_participants(api.ListParticipantsRequest(room=room))
            if not any(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants):
                return
            await asyncio.sleep(0.2)


async def test_a_phone_room_resolves_the_agent_by_number(
    worker_service: WorkerService,
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    tenant = running_registry.new_tenant(number=random_e164())
    assert tenant.number is not None
    room_name, call_sid = phone_room(tenant.number), f"CA{secrets.token_hex(16)}"
    caller = await join_as_caller(
        livekit_server, room_name, {SIP_TRUNK_NUMBER: tenant.number, SIP_CALL_SID: call_sid}
    )
    session_id = phone_session_id(call_sid)
    try:
        await dispatch(livekit_api, worker_service, room_name)
        started: SessionStarted = await session_events.wait_for(SessionStarted, session_id)
        assert (started.agent_id, started.org_id) == (tenant.agent_id, tenant.org_id)
        assert started.data.room_name == room_name
    finally:
        await caller.disconnect()
    ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
    assert ended.data.reason == "user_hangup"
    assert ended.agent_id == tenant.agent_id
    logged = await asyncio.to_thread(
        running_registry.wait_for_session, tenant.token, session_id, status="ended"
    )
    assert logged["kind"] == "phone" and logged["end_reason"] == "user_hangup"


async def test_a_phone_room_whose_trunk_number_differs_is_refused(
    worker_service: WorkerService,
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    tenant = running_registry.new_tenant(number=random_e164())
    assert tenant.number is not None
    room_name, call_sid = phone_room(tenant.number), f"CA{secrets.token_hex(16)}"
    caller = await join_as_caller(
        livekit_server, room_name, {SIP_TRUNK_NUMBER: random_e164(), SIP_CALL_SID: call_sid}
    )
    try:
        await dispatch(livekit_api, worker_service, room_name)
        ended: SessionEnded = await session_events.wait_for(SessionEnded, phone_session_id(call_sid))
        assert ended.data.reason == "agent_unavailable"
        assert "does not match" in (ended.data.detail or "")
        await wait_for_agent_to_leave(livekit_api, room_name)
    finally:
        await caller.disconnect()


@pytest.mark.parametrize("known", [False, True], ids=["unknown", "inactive"])
async def test_an_unavailable_agent_ends_the_session_and_leaves(
    known: bool,
    worker_service: WorkerService,
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    agent_id = running_registry.new_tenant(active=False).agent_id if known else uuid.uuid4()
    room = new_test_room(agent_id)
    session_id = uuid.uuid4()
    caller = await join_as_caller(livekit_server, room.name, {})
    try:
        metadata = json.dumps({"agent_id": str(agent_id), "session_id": str(session_id)})
        await dispatch(livekit_api, worker_service, room.name, metadata)
        ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
        assert ended.data.reason == "agent_unavailable"
        assert ended.agent_id == agent_id
        assert ended.data.detail == ("the agent is inactive" if known else "no such agent")
        await wait_for_agent_to_leave(livekit_api, room.name)
        started = [e for e in session_events.events if isinstance(e, SessionStarted)]
        assert session_id not in [e.session_id for e in started]
    finally:
        await caller.disconnect()
