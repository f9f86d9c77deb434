"""Test tokens against the real LiveKit server: what they open, what they do not, and when they stop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from agentline_token_service.service import TestToken, generate_test_token
from agentline_token_service.settings import TokenServiceSettings
from livekit import api as livekit_api
from livekit import rtc

pytestmark = pytest.mark.integration

# LiveKit's server accepts a token up to a minute past its expiry (go-jose's default clock leeway).
LIVEKIT_LEEWAY_SECONDS = 60


@pytest.fixture
def settings(livekit_values: dict[str, str]) -> TokenServiceSettings:
    return TokenServiceSettings(**livekit_values)  # type: ignore[arg-type]


@pytest.fixture
def mint(settings: TokenServiceSettings) -> Callable[..., TestToken]:
    def factory(**overrides: Any) -> TestToken:
        values: dict[str, Any] = {
            "agent_id": uuid.uuid4(),
            "session_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "user_name": "ada@example.test",
        }
        values.update(overrides)
        return generate_test_token(settings, **values)

    return factory


@pytest.fixture
async def lkapi(livekit_server: Any) -> AsyncIterator[livekit_api.LiveKitAPI]:
    client = livekit_api.LiveKitAPI(
        url=livekit_server.http_url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    )
    yield client
    await client.aclose()


@pytest.fixture
async def joined() -> AsyncIterator[Callable[[str, str], Any]]:
    rooms: list[rtc.Room] = []

    async def join(url: str, token: str) -> rtc.Room:
        room = rtc.Room()
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False, connect_timeout=10))
        rooms.append(room)
        return room

    yield join
    for room in rooms:
        await room.disconnect()


async def test_the_token_joins_its_room_with_the_agent_dispatched(
    livekit_server: Any,
    mint: Callable[..., TestToken],
    lkapi: livekit_api.LiveKitAPI,
    joined: Callable[[str, str], Any],
) -> None:
    agent_id, session_id = uuid.uuid4(), uuid.uuid4()
    token = mint(agent_id=agent_id, session_id=session_id)

    room = await joined(livekit_server.url, token.token)

    assert room.name == token.room_name
    assert room.local_participant.identity == token.identity
    [created] = (await lkapi.room.list_rooms(livekit_api.ListRoomsRequest(names=[token.room_name]))).rooms
    assert created.empty_timeout == 300
    [participant] = (
        await lkapi.room.list_participants(livekit_api.ListParticipantsRequest(room=token.room_name))
    ).participants
    assert participant.identity == token.identity
    assert participant.name == "ada@example.test"
    permission = participant.permission
    assert permission.can_subscribe and permission.can_publish_data
    assert list(permission.can_publish_sources) == [livekit_api.TrackSource.MICROPHONE]
    assert not (permission.hidden or permission.recorder or permission.agent)
    assert not permission.can_update_metadata
    [dispatch] = await lkapi.agent_dispatch.list_dispatch(token.room_name)
    assert dispatch.agent_name == "agentline-agent"
    assert json.loads(dispatch.metadata) == {"agent_id": str(agent_id), "session_id": str(session_id)}


async def test_the_token_publishes_a_microphone_and_nothing_else(
    livekit_server: Any,
    mint: Callable[..., TestToken],
    joined: Callable[[str, str], Any],
    lkapi: livekit_api.LiveKitAPI,
) -> None:
    token = mint()
    room = await joined(livekit_server.url, token.token)
    source = rtc.AudioSource(48000, 1)

    microphone = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    published = await room.local_participant.publish_track(
        microphone, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )
    assert published.sid

    # LiveKit does not answer a publication the grants forbid; the client gives up waiting.
    screen_audio = rtc.LocalAudioTrack.create_audio_track("screen", source)
    with pytest.raises(Exception, match=r"(?i)timed out|not allowed|permission"):
        await room.local_participant.publish_track(
            screen_audio, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO)
        )
    participant = await lkapi.room.get_participant(
        livekit_api.RoomParticipantIdentity(room=token.room_name, identity=token.identity)
    )
    assert [(track.sid, track.source) for track in participant.tracks] == [
        (published.sid, livekit_api.TrackSource.MICROPHONE)
    ]


async def twirp(livekit_server: Any, method: str, token: str, body: dict[str, Any]) -> int:
    async with httpx.AsyncClient(base_url=livekit_server.http_url, timeout=5) as client:
        response = await client.post(
            f"/twirp/livekit.RoomService/{method}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        return response.status_code


async def test_the_token_reaches_no_other_room_and_no_server_api(
    livekit_server: Any,
    mint: Callable[..., TestToken],
    joined: Callable[[str, str], Any],
    lkapi: livekit_api.LiveKitAPI,
) -> None:
    token = mint()
    other = mint()
    await joined(livekit_server.url, other.token)
    await joined(livekit_server.url, token.token)

    refused = {
        "ListRooms": {},
        "CreateRoom": {"name": other.room_name},
        "DeleteRoom": {"room": other.room_name},
        "ListParticipants": {"room": other.room_name},
        "RemoveParticipant": {"room": other.room_name, "identity": other.identity},
        "DeleteRoom (its own)": {"room": token.room_name},
        "MutePublishedTrack": {"room": token.room_name, "identity": token.identity, "track_sid": "x"},
    }
    for method, body in refused.items():
        status = await twirp(livekit_server, method.split(" ")[0], token.token, body)
        assert status in (401, 403), f"{method} answered {status} to a test token"
    # The same call with an administrative token works, so the refusals above are the token's.
    admin = (
        livekit_api.AccessToken(livekit_server.api_key, livekit_server.api_secret)
        .with_grants(livekit_api.VideoGrants(room_list=True))
        .to_jwt()
    )
    assert await twirp(livekit_server, "ListRooms", admin, {}) == 200
    participants = await lkapi.room.list_participants(
        livekit_api.ListParticipantsRequest(room=other.room_name)
    )
    assert [p.identity for p in participants.participants] == [other.identity]


async def test_a_token_signed_with_another_secret_is_refused(
    livekit_server: Any, livekit_values: dict[str, str], joined: Callable[[str, str], Any]
) -> None:
    forged_settings = TokenServiceSettings(
        **{**livekit_values, "livekit_api_secret": "x" * 48}  # type: ignore[arg-type]
    )
    forged = generate_test_token(
        forged_settings,
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        user_name="eve@example.test",
    )
    with pytest.raises(rtc.ConnectError, match="401"):
        await joined(livekit_server.url, forged.token)


async def test_an_expired_token_is_refused(
    livekit_server: Any, mint: Callable[..., TestToken], joined: Callable[[str, str], Any]
) -> None:
    token = mint(ttl=timedelta(seconds=2))
    room = await joined(livekit_server.url, token.token)
    assert room.name == token.room_name
    await room.disconnect()

    past_expiry = token.expires_at + timedelta(seconds=LIVEKIT_LEEWAY_SECONDS + 2)
    await asyncio.sleep(max(0.0, past_expiry.timestamp() - time.time()))
    assert datetime.now(UTC) > past_expiry

    with pytest.raises(rtc.ConnectError, match="expired"):
        await joined(livekit_server.url, token.token)
