"""POST /api/v1/livekit/webhook: signatures checked, a finished test room ends its session on the bus."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from agentline_common.events import SessionEnded
from agentline_common.rooms import new_test_room
from agentline_common.testing.servers import (
    LiveKitServer,
    free_port,
    make_base_dir,
    tcp_open,
    wait_until,
)
from agentline_token_service.api import MAX_WEBHOOK_BYTES
from agentline_token_service.app import create_app
from agentline_token_service.service import SessionRef, generate_test_token
from agentline_token_service.settings import TokenServiceSettings
from agentline_token_service.stores import RedisTestCalls
from google.protobuf.json_format import MessageToJson
from livekit import api as livekit_api
from livekit import rtc
from redis.asyncio import Redis

pytestmark = pytest.mark.integration

WEBHOOK = "/api/v1/livekit/webhook"
API_KEY = "APIwebhook" + secrets.token_hex(4)
API_SECRET = secrets.token_urlsafe(48)


def signed(body: str, *, key: str = API_KEY, secret: str = API_SECRET) -> dict[str, str]:
    """Headers as LiveKit signs a webhook: a JWT from the API key carrying the body's sha256."""
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    token = livekit_api.AccessToken(key, secret).with_sha256(digest).to_jwt()
    return {"Authorization": token, "Content-Type": "application/webhook+json"}


def room_finished(room_name: str, *, event_id: str | None = None) -> str:
    event = livekit_api.WebhookEvent(
        id=event_id or f"EV_{secrets.token_hex(6)}",
        event="room_finished",
        room=livekit_api.Room(sid=f"RM_{secrets.token_hex(6)}", name=room_name),
        created_at=1_700_000_000,
    )
    return MessageToJson(event)


@pytest.fixture
async def session_room(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """`await session_room()` records a test room the way issuing a token does; returns (name, ref)."""
    redis = Redis.from_url(redis_url)
    calls = RedisTestCalls(redis, limit=10, window_seconds=60, mapping_ttl_seconds=3600, timeout=2)

    async def record(room_name: str | None = None) -> tuple[str, SessionRef]:
        ref = SessionRef(session_id=uuid.uuid4(), agent_id=uuid.uuid4(), org_id=uuid.uuid4())
        name = room_name or new_test_room(ref.agent_id).name
        assert (
            await calls.admit(
                f"user:{uuid.uuid4()}", room_name=name, ref=ref, user=uuid.uuid4(), token_issued_at=0
            )
        ).allowed
        return name, ref

    yield record
    await redis.aclose()


@pytest.fixture
async def client(
    app_client: Callable[..., Any], make_settings: Callable[..., TokenServiceSettings]
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        livekit_url="ws://127.0.0.1:1", livekit_api_key=API_KEY, livekit_api_secret=API_SECRET
    )
    async with app_client(settings) as running:
        yield running


async def test_a_finished_test_room_ends_its_session(
    client: httpx.AsyncClient,
    session_room: Callable[..., Any],
    events_on: Callable[..., Any],
    exchange: str,
) -> None:
    room_name, ref = await session_room()
    ended = await events_on(exchange, "session.ended")
    body = room_finished(room_name, event_id="EV_finished")

    response = await client.post(WEBHOOK, content=body, headers=signed(body))

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "session_ended"}
    event = await asyncio.wait_for(ended.get(), 15)
    assert isinstance(event, SessionEnded)
    assert (event.session_id, event.agent_id, event.org_id) == (
        ref.session_id,
        ref.agent_id,
        ref.org_id,
    )
    assert event.data.reason == "room_finished"
    assert event.data.room_name == room_name

    # LiveKit retries a webhook it thinks failed: the retry carries the same event id.
    again = await client.post(WEBHOOK, content=body, headers=signed(body))
    assert again.status_code == 200
    assert (await asyncio.wait_for(ended.get(), 15)).id == event.id


async def test_other_events_and_rooms_end_nothing(
    client: httpx.AsyncClient,
    session_room: Callable[..., Any],
    events_on: Callable[..., Any],
    exchange: str,
) -> None:
    room_name, _ = await session_room()
    ended = await events_on(exchange, "session.ended")
    joined = MessageToJson(
        livekit_api.WebhookEvent(
            id="EV_joined", event="participant_joined", room=livekit_api.Room(name=room_name)
        )
    )
    bodies = [
        joined,
        room_finished("call_+14155550100_23456789ABCD"),
        room_finished(new_test_room(uuid.uuid4()).name),  # a room this service never issued
    ]
    for body in bodies:
        response = await client.post(WEBHOOK, content=body, headers=signed(body))
        assert response.status_code == 200
        assert response.json() == {"status": "ignored"}
    await asyncio.sleep(0.3)
    assert ended.empty()


async def test_unsigned_or_badly_signed_webhooks_are_401(
    client: httpx.AsyncClient,
    session_room: Callable[..., Any],
    events_on: Callable[..., Any],
    exchange: str,
) -> None:
    room_name, _ = await session_room()
    ended = await events_on(exchange, "session.ended")
    body = room_finished(room_name)
    other_body = room_finished(room_name, event_id="EV_other")
    attempts = {
        "no signature": {"Content-Type": "application/webhook+json"},
        "other secret": signed(body, secret=secrets.token_urlsafe(48)),
        "other key": signed(body, key="APIsomeoneelse"),
        "signature of another body": signed(other_body),
        "not a jwt": {"Authorization": "abc.def.ghi"},
    }
    for name, headers in attempts.items():
        response = await client.post(WEBHOOK, content=body, headers=headers)
        assert response.status_code == 401, name
        assert "sign" in response.json()["detail"] or "Authorization" in response.json()["detail"]
    await asyncio.sleep(0.3)
    assert ended.empty()


async def test_a_signed_body_that_is_not_an_event_is_400(client: httpx.AsyncClient) -> None:
    body = "{not json"
    response = await client.post(WEBHOOK, content=body, headers=signed(body))
    assert response.status_code == 400
    assert "WebhookEvent" in response.json()["detail"]


async def test_an_oversized_body_is_413_before_any_signature_check(client: httpx.AsyncClient) -> None:
    body = "x" * (MAX_WEBHOOK_BYTES + 1)
    response = await client.post(WEBHOOK, content=body, headers={"Authorization": "anything"})
    assert response.status_code == 413
    assert f"larger than {MAX_WEBHOOK_BYTES} bytes" in response.json()["detail"]


async def test_without_livekit_the_webhook_is_503(
    app_client: Callable[..., Any], make_settings: Callable[..., TokenServiceSettings]
) -> None:
    body = room_finished(new_test_room(uuid.uuid4()).name)
    async with app_client(make_settings()) as client:
        response = await client.post(WEBHOOK, content=body, headers=signed(body))
    assert response.status_code == 503
    assert "LIVEKIT_API_KEY" in response.json()["detail"]


@pytest.fixture
async def webhooked_livekit(
    make_settings: Callable[..., TokenServiceSettings],
) -> AsyncIterator[tuple[LiveKitServer, TokenServiceSettings]]:
    """A LiveKit server of this test's own whose webhooks go to a token-service served on loopback."""
    port = free_port()
    server = LiveKitServer(base_dir=make_base_dir("livekit-webhook"), redis_address=None)
    with server.config_path.open("a") as config:
        config.write(
            f"webhook:\n  api_key: {server.api_key}\n  urls:\n    - http://127.0.0.1:{port}{WEBHOOK}\n"
        )
    settings = make_settings(
        livekit_url=server.url, livekit_api_key=server.api_key, livekit_api_secret=server.api_secret
    )
    http = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(http.serve())
    await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(
            wait_until, lambda: tcp_open("127.0.0.1", port), what="token-service", process=None
        )
        yield server, settings
    finally:
        await asyncio.to_thread(server.stop)
        http.should_exit = True
        await serving
        shutil.rmtree(server.base_dir, ignore_errors=True)


async def test_livekit_itself_ends_the_session_when_the_room_closes(
    webhooked_livekit: tuple[LiveKitServer, TokenServiceSettings],
    session_room: Callable[..., Any],
    events_on: Callable[..., Any],
    exchange: str,
) -> None:
    server, settings = webhooked_livekit
    token = generate_test_token(
        settings,
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        user_name="ada@example.test",
    )
    _, ref = await session_room(token.room_name)
    ended = await events_on(exchange, "session.ended")
    room = rtc.Room()
    await room.connect(server.url, token.token, rtc.RoomOptions(auto_subscribe=False))
    try:
        async with livekit_api.LiveKitAPI(
            url=server.http_url, api_key=server.api_key, api_secret=server.api_secret
        ) as lkapi:
            await lkapi.room.delete_room(livekit_api.DeleteRoomRequest(room=token.room_name))
        event = await asyncio.wait_for(ended.get(), 15)
    finally:
        await room.disconnect()

    assert isinstance(event, SessionEnded)
    assert event.session_id == ref.session_id
    assert event.data.reason == "room_finished"
    assert event.data.room_name == token.room_name
