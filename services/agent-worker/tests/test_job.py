"""The worker as a process, dispatched by a real LiveKit server, looking agents up in the real
registry and reporting on the real broker. Signalling only (loopback): no media is needed here."""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from agentline_common.agents import AgentConfig
from agentline_common.events import CALL_SID_ATTRIBUTE, SessionEnded, SessionStarted, phone_session_id
from agentline_common.registry_client import agent_key, number_key
from agentline_common.rooms import LIVEKIT_GUID_ALPHABET, new_test_room
from agentline_common.testing.services import (
    RegistryService,
    SessionEvents,
    Tenant,
    WorkerService,
    new_worker,
    random_e164,
)
from agentline_worker.job import Clients, look_up_agent
from agentline_worker.service import SIP_TRUNK_NUMBER, fallback_session_id
from agentline_worker.settings import WorkerSettings
from livekit import api, rtc
from pydantic import SecretStr
from redis.asyncio import Redis

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


async def agents_in(livekit_api: api.LiveKitAPI, room: str) -> int:
    listed = await livekit_api.room.list_participants(api.ListParticipantsRequest(room=room))
    return sum(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants)


def logged_for(worker: WorkerService, session_id: uuid.UUID, event: str) -> list[str]:
    """The worker's log lines of `event` for the session."""
    return [
        line
        for line in worker.log_path.read_text().splitlines()
        if f'"{event}"' in line and str(session_id) in line
    ]


async def wait_for_agent_to_leave(livekit_api: api.LiveKitAPI, room: str) -> None:
    async with asyncio.timeout(EVENT_WAIT):
        while await agents_in(livekit_api, room):
            await asyncio.sleep(0.2)


async def test_a_phone_room_resolves_the_agent_by_number(
    worker_service: WorkerService,
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    tenant, room_name, caller, session_id = await start_phone_call(
        running_registry, worker_service, livekit_server, livekit_api
    )
    try:
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
        livekit_server, room_name, {SIP_TRUNK_NUMBER: random_e164(), CALL_SID_ATTRIBUTE: call_sid}
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


async def test_an_agent_dispatched_before_its_caller_waits_for_them(
    worker_service: WorkerService,
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    """A dispatch may create the room before the browser joins: the agent must not start the call
    (and greet) in an empty room, but when the caller comes."""
    tenant = running_registry.new_tenant()
    room, session_id = new_test_room(tenant.agent_id), uuid.uuid4()
    metadata = json.dumps({"agent_id": str(tenant.agent_id), "session_id": str(session_id)})
    await dispatch(livekit_api, worker_service, room.name, metadata)
    async with asyncio.timeout(EVENT_WAIT):
        while not await agents_in(livekit_api, room.name):
            await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)
    assert session_id not in [e.session_id for e in session_events.events]
    caller = await join_as_caller(livekit_server, room.name, {})
    try:
        started: SessionStarted = await session_events.wait_for(SessionStarted, session_id)
        assert started.agent_id == tenant.agent_id
    finally:
        await caller.disconnect()
    ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
    assert ended.data.reason == "user_hangup"


@pytest.mark.parametrize("kind", ["test", "phone"])
async def test_a_caller_who_never_comes_ends_the_session_as_failed(
    kind: str,
    own_worker: Callable[..., WorkerService],
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_api: api.LiveKitAPI,
) -> None:
    """Whether the browser or the SIP participant never comes, the call failed: the agent is not
    to blame. A phone call's CallSid is unknown without its participant, so its session is the
    room's."""
    worker = await asyncio.to_thread(own_worker, 60, CALLER_WAIT_SECONDS="2")
    if kind == "phone":
        room_name, metadata = phone_room(random_e164()), ""
        session_id = fallback_session_id(room_name)
    else:
        room_name, session_id = new_test_room(uuid.uuid4()).name, uuid.uuid4()
        metadata = json.dumps({"session_id": str(session_id)})
    await dispatch(livekit_api, worker, room_name, metadata)
    ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
    assert ended.data.reason == "call_failed"
    assert ended.data.detail == "nobody joined within 2 s"
    assert session_id not in [e.session_id for e in session_events.events if isinstance(e, SessionStarted)]
    await wait_for_agent_to_leave(livekit_api, room_name)


async def test_a_shutdown_while_the_agent_waits_for_its_caller_ends_the_session(
    own_worker: Callable[..., WorkerService],
    session_events: SessionEvents,
    livekit_api: api.LiveKitAPI,
) -> None:
    """A job stopped before its session began still reports the session's end."""
    worker = await asyncio.to_thread(own_worker, 1, CALLER_WAIT_SECONDS="600")
    room, session_id = new_test_room(uuid.uuid4()), uuid.uuid4()
    await dispatch(livekit_api, worker, room.name, json.dumps({"session_id": str(session_id)}))
    async with asyncio.timeout(EVENT_WAIT):
        while not await agents_in(livekit_api, room.name):
            await asyncio.sleep(0.1)
    worker.send_sigterm()
    # livekit-agents gives the entrypoint 15 s to return before it cancels it and runs `finish`.
    ended = await wait_longer_for_end(session_events, session_id)
    assert ended.data.reason == "worker_shutdown"
    assert await asyncio.to_thread(worker.wait_exit, 30.0) == 0


async def wait_longer_for_end(events: SessionEvents, session_id: uuid.UUID) -> SessionEnded:
    """`session.ended` of `session_id`, allowing for livekit-agents' own shutdown grace period."""
    async with asyncio.timeout(EVENT_WAIT * 2):
        while True:
            found = [e for e in events.events if isinstance(e, SessionEnded) and e.session_id == session_id]
            if found:
                return found[0]
            await asyncio.sleep(0.2)


@pytest.fixture
def own_worker(
    livekit_server: Any, running_registry: RegistryService, worker_models: Any
) -> Iterator[Callable[..., WorkerService]]:
    """Start a worker of this test alone (the test stops it), with the given drain timeout and
    further settings."""
    started: list[WorkerService] = []

    def start(drain_timeout_seconds: int, **settings: str) -> WorkerService:
        worker = new_worker(
            livekit=livekit_server,
            registry=running_registry,
            models=worker_models,
            extra_env={"DRAIN_TIMEOUT_SECONDS": str(drain_timeout_seconds), **settings},
        )
        started.append(worker)
        worker.start()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
            shutil.rmtree(worker.base_dir, ignore_errors=True)


async def first_phone_call(
    registry: RegistryService,
    worker: WorkerService,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
    session_events: SessionEvents,
) -> Tenant:
    """A whole call to a fresh tenant's number, which leaves its agent in the look-up cache, as the
    gateway's look-up does for a real call; the tenant."""
    tenant, room, caller, session_id = await start_phone_call(registry, worker, livekit_server, livekit_api)
    await session_events.wait_for(SessionStarted, session_id)
    await caller.disconnect()
    await wait_for_agent_to_leave(livekit_api, room)
    return tenant


async def start_phone_call(
    registry: RegistryService,
    worker: WorkerService,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
    tenant: Tenant | None = None,
) -> tuple[Tenant, str, rtc.Room, uuid.UUID]:
    """A phone caller in a number room of `tenant`'s agent (a fresh one by default), and the agent
    dispatched to it: (the tenant, the room, the caller, the session id)."""
    tenant = tenant or registry.new_tenant(number=random_e164())
    assert tenant.number is not None
    room_name, call_sid = phone_room(tenant.number), f"CA{secrets.token_hex(16)}"
    caller = await join_as_caller(
        livekit_server, room_name, {SIP_TRUNK_NUMBER: tenant.number, CALL_SID_ATTRIBUTE: call_sid}
    )
    await dispatch(livekit_api, worker, room_name)
    return tenant, room_name, caller, phone_session_id(call_sid)


async def test_sigterm_drains_calls_in_progress_and_takes_no_new_ones(
    own_worker: Callable[..., WorkerService],
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    worker = await asyncio.to_thread(own_worker, 60)
    _, _, caller, session_id = await start_phone_call(running_registry, worker, livekit_server, livekit_api)
    late_caller: rtc.Room | None = None
    try:
        await session_events.wait_for(SessionStarted, session_id)
        worker.send_sigterm()
        assert await asyncio.to_thread(worker.wait_exit, 3.0) is None  # still serving the call
        readiness = worker.readiness()
        assert readiness["checks"]["accepting_jobs"] is False

        _, _, late_caller, late_session = await start_phone_call(
            running_registry, worker, livekit_server, livekit_api
        )
        await asyncio.sleep(5)
        assert late_session not in [e.session_id for e in session_events.events]
        assert await asyncio.to_thread(worker.wait_exit, 0.1) is None
    finally:
        await caller.disconnect()
        if late_caller is not None:
            await late_caller.disconnect()
    ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
    assert ended.data.reason == "user_hangup"
    assert await asyncio.to_thread(worker.wait_exit, 30.0) == 0


async def test_a_call_cut_by_shutdown_still_reports_its_end(
    own_worker: Callable[..., WorkerService],
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
) -> None:
    worker = await asyncio.to_thread(own_worker, 2)
    _, _, caller, session_id = await start_phone_call(running_registry, worker, livekit_server, livekit_api)
    try:
        await session_events.wait_for(SessionStarted, session_id)
        worker.send_sigterm()
        ended: SessionEnded = await session_events.wait_for(SessionEnded, session_id)
        assert ended.data.reason == "worker_shutdown"
        assert await asyncio.to_thread(worker.wait_exit, 30.0) == 0
    finally:
        await caller.disconnect()


async def test_a_call_that_ends_while_the_broker_is_down_is_logged_once_it_is_back(
    worker_service: WorkerService,
    running_registry: RegistryService,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
    session_events: SessionEvents,
    rabbitmq: Any,
) -> None:
    tenant, room_name, caller, session_id = await start_phone_call(
        running_registry, worker_service, livekit_server, livekit_api
    )
    try:
        await session_events.wait_for(SessionStarted, session_id)
        await asyncio.to_thread(rabbitmq.stop)
        try:
            await caller.disconnect()
            await wait_for_agent_to_leave(livekit_api, room_name)
            await asyncio.sleep(1.0)  # the worker's publish of session.ended fails meanwhile
        finally:
            await asyncio.to_thread(rabbitmq.start)
    finally:
        await caller.disconnect()

    logged = await asyncio.to_thread(
        running_registry.wait_for_session, tenant.token, session_id, status="ended", timeout=60.0
    )
    assert logged["end_reason"] == "user_hangup"
    retried = [
        line
        for line in worker_service.log_path.read_text().splitlines()
        if "bus.publish_retrying" in line and "session.ended" in line
    ]
    assert retried, "session.ended was never retried: the broker outage was not exercised"


async def test_a_call_that_starts_while_the_broker_is_down_is_answered_and_logged_once_it_is_back(
    own_worker: Callable[..., WorkerService],
    running_registry: RegistryService,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
    session_events: SessionEvents,
    rabbitmq: Any,
    redis_url: str,
) -> None:
    """Past the look-up cache's minute, too: the agent the number had before the outage answers, as
    the gateway bridged the call to it (the agent's last known config, kept for a day), and as soon
    as the broker refused the call's connection, not after the look-up's bound (10 s here)."""
    worker = await asyncio.to_thread(own_worker, 60, REGISTRY_TIMEOUT_SECONDS="10")
    tenant = await first_phone_call(running_registry, worker, livekit_server, livekit_api, session_events)
    assert tenant.number is not None

    await asyncio.to_thread(rabbitmq.stop)
    try:
        redis = Redis.from_url(redis_url)
        try:
            await redis.delete(number_key(tenant.number), agent_key(tenant.agent_id))
        finally:
            await redis.aclose()
        _, room_name, caller, session_id = await start_phone_call(
            running_registry, worker, livekit_server, livekit_api, tenant
        )
        async with asyncio.timeout(EVENT_WAIT):
            while not any(
                publication.subscribed
                for participant in caller.remote_participants.values()
                for publication in participant.track_publications.values()
            ):
                await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(rabbitmq.start)
    await caller.disconnect()

    logged = await asyncio.to_thread(
        running_registry.wait_for_session, tenant.token, session_id, status="ended", timeout=60.0
    )
    assert logged["end_reason"] == "user_hangup"
    assert logged["started_at"] is not None
    assert [entry["role"] for entry in logged["transcript"]][:1] == ["agent"]
    call_log = [line for line in worker.log_path.read_text().splitlines() if room_name in line]
    stale = [i for i, line in enumerate(call_log) if "registry_client.answered_stale" in line]
    assert stale, "the agent did not come from its last known config"
    retries_before = sum("call.bus_retrying" in line for line in call_log[: stale[0]])
    # One retry a second: waiting out the 10 s bound would show about ten.
    assert retries_before < 5, f"the look-up waited for the broker through {retries_before} retries"
    assert any("call.bus_retrying" in line for line in call_log), "the broker outage was not exercised"


async def test_a_refused_call_leaves_at_once_while_the_broker_is_down(
    worker_service: WorkerService,
    running_registry: RegistryService,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
    rabbitmq: Any,
) -> None:
    """The look-up fails without the broker, so the call is refused: the agent leaves the caller at
    once, not after its report's retries, and the report reaches the call log once the broker is
    back. (The call log, not `session_events`: that private queue vanishes with the broker and may
    be declared again only after the worker's report went by.)"""
    tenant, session_id = running_registry.new_tenant(), uuid.uuid4()  # the agent is not in the cache
    room = new_test_room(tenant.agent_id)
    caller = await join_as_caller(livekit_server, room.name, {})
    try:
        await asyncio.to_thread(rabbitmq.stop)
        try:
            metadata = json.dumps({"agent_id": str(tenant.agent_id), "session_id": str(session_id)})
            await dispatch(livekit_api, worker_service, room.name, metadata)
            # The worker's log, not the room's participants: the agent may be in the room too
            # briefly for a poll to see it.
            async with asyncio.timeout(EVENT_WAIT):
                while not (lines := logged_for(worker_service, session_id, "call.refused")):
                    await asyncio.sleep(0.1)
            assert logged_for(worker_service, session_id, "call.joined"), "the agent never joined"
            # Within EVENT_WAIT, well before its report gives up (PUBLISH_GIVE_UP_SECONDS, 60 s).
            await wait_for_agent_to_leave(livekit_api, room.name)
        finally:
            await asyncio.to_thread(rabbitmq.start)
        assert "the registry did not answer" in lines[0]
        logged = await asyncio.to_thread(
            running_registry.wait_for_session, tenant.token, session_id, status="failed", timeout=60.0
        )
        assert logged["end_reason"] == "agent_unavailable"
        assert "the registry did not answer" in (logged["end_detail"] or "")
    finally:
        await caller.disconnect()


async def test_a_long_call_begun_in_a_broker_outage_reports_its_end_once_the_broker_is_back(
    own_worker: Callable[..., WorkerService],
    running_registry: RegistryService,
    session_events: SessionEvents,
    livekit_server: Any,
    livekit_api: api.LiveKitAPI,
    rabbitmq: Any,
) -> None:
    """The bus gave up connecting during the call (after `PUBLISH_GIVE_UP_SECONDS`); the broker is
    back when the call ends, and its end is reported, not lost."""
    # Long enough for the report at the end to reach a broker just restarted and busy with every
    # client's reconnect; short enough for session.started to give up during the outage.
    worker = await asyncio.to_thread(own_worker, 60, PUBLISH_GIVE_UP_SECONDS="8")
    tenant = await first_phone_call(running_registry, worker, livekit_server, livekit_api, session_events)

    await asyncio.to_thread(rabbitmq.stop)
    try:
        _, _, caller, session_id = await start_phone_call(
            running_registry, worker, livekit_server, livekit_api, tenant
        )
        async with asyncio.timeout(EVENT_WAIT):
            while "call.event_lost" not in worker.log_path.read_text():  # session.started gave up
                await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(rabbitmq.start)
    await caller.disconnect()

    logged = await asyncio.to_thread(
        running_registry.wait_for_session, tenant.token, session_id, status="ended", timeout=60.0
    )
    assert logged["end_reason"] == "user_hangup"


@pytest.fixture
def unreachable_redis_url() -> Iterator[str]:
    """A Redis URL on loopback whose connections never complete, as to a host that drops packets: the
    port listens, but its accept queue is full and never taken from, so the kernel drops new SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for held in (*fillers, listener):
            held.close()


def worker_settings(registry: RegistryService, redis_url: str) -> WorkerSettings:
    return WorkerSettings(
        amqp_url=SecretStr(registry.amqp_url),
        bus_exchange=registry.exchange,
        redis_url=SecretStr(redis_url),
    )


async def test_a_look_up_with_redis_unreachable_is_answered_within_seconds(
    running_registry: RegistryService, unreachable_redis_url: str
) -> None:
    """The cache read and the write of the registry's answer each wait for a connection that never
    comes: with redis-py's 5 s to connect, the caller heard over 10 s of silence first. Answered at
    all, the look-up fit in its 5 s: Redis was tried once, not once per step."""
    tenant = running_registry.new_tenant()
    settings = worker_settings(running_registry, unreachable_redis_url)
    clients = Clients.create(settings)
    try:
        await clients.bus.connect()
        agent = await look_up_agent(
            clients.registry,
            new_test_room(tenant.agent_id).name,
            bus_ready=functools.partial(asyncio.sleep, 0),  # connected above
            give_up_after=settings.lookup_give_up_seconds,
        )
    finally:
        await clients.close()
    assert isinstance(agent, AgentConfig) and agent.id == tenant.agent_id


async def test_a_look_up_that_cannot_finish_refuses_the_call_within_its_bound(
    running_registry: RegistryService, redis_url: str
) -> None:
    tenant = running_registry.new_tenant()  # not in the cache: the look-up needs the broker
    settings = worker_settings(running_registry, redis_url)
    clients = Clients.create(settings)
    try:
        answer = await look_up_agent(
            clients.registry,
            new_test_room(tenant.agent_id).name,
            bus_ready=asyncio.Event().wait,  # the broker's handshake never ends
            give_up_after=settings.lookup_give_up_seconds,
        )
    finally:
        await clients.close()
    assert answer == "the agent could not be looked up within 5 s"
