"""The pinned LiveKit server works under the network rule: room API on loopback, media in a namespace."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest
from agentline_common.testing.livekit import NamespacedLiveKit
from agentline_common.testing.netns import NetworkNamespace
from agentline_common.testing.servers import LiveKitServer
from livekit import api

PROBE_MODULE = "agentline_common.testing.rtc_probe"


def probe_args(livekit: NamespacedLiveKit, mode: str, *, room: str, options: list[str]) -> list[str]:
    """Arguments for the rtc client (`python -m agentline_common.testing.rtc_probe`)."""
    token = livekit.token(room=room, identity=f"{mode}-{secrets.token_hex(3)}")
    return ["-m", PROBE_MODULE, mode, "--url", livekit.url, "--token", token, *options]


@pytest.mark.integration
async def test_room_service_creates_lists_and_deletes_rooms(livekit_server: LiveKitServer) -> None:
    name = f"test-room-{secrets.token_hex(6)}"
    async with api.LiveKitAPI(
        livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret
    ) as client:
        created = await client.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=60))
        assert created.name == name
        listed = await client.room.list_rooms(api.ListRoomsRequest(names=[name]))
        assert [room.name for room in listed.rooms] == [name]

        await client.room.delete_room(api.DeleteRoomRequest(room=name))
        after = await client.room.list_rooms(api.ListRoomsRequest(names=[name]))
        assert after.rooms == []


@pytest.mark.integration
async def test_room_service_refuses_a_wrong_secret(livekit_server: LiveKitServer) -> None:
    async with api.LiveKitAPI(
        livekit_server.http_url, livekit_server.api_key, secrets.token_urlsafe(48)
    ) as client:
        with pytest.raises(api.TwirpError) as refused:
            await client.room.list_rooms(api.ListRoomsRequest())
    assert refused.value.status == 401


@pytest.mark.integration
def test_livekit_config_names_no_public_stun_server(livekit_server: LiveKitServer) -> None:
    config = livekit_server.config_path.read_text()
    assert "use_external_ip: false" in config
    assert "google" not in config
    assert "stun_servers:\n    - 127.0.0.1:" in config


@pytest.mark.integration
def test_namespace_has_a_private_address_and_no_route_out(netns: NetworkNamespace) -> None:
    addresses = netns.run(["ip", "-4", "-o", "addr", "show"]).stdout
    assert f"{netns.address}/24" in addresses
    routes = netns.run(["ip", "-4", "route", "show"]).stdout
    assert "default" not in routes


@pytest.mark.e2e
def test_client_receives_audio_published_by_another_client(livekit_netns: NamespacedLiveKit) -> None:
    room = f"test-media-{secrets.token_hex(6)}"
    publisher = livekit_netns.popen_python(
        probe_args(livekit_netns, "publish", room=room, options=["--seconds", "60"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        received = livekit_netns.run_python(
            probe_args(livekit_netns, "receive", room=room, options=["--frames", "50", "--timeout", "45"]),
            timeout=90,
        )
    finally:
        publisher.terminate()
        publisher.wait(timeout=20)
    assert received.returncode == 0, received.stdout + received.stderr
    stats = json.loads(received.stdout.strip().splitlines()[-1])
    assert stats["non_silent_frames"] >= 50
    assert stats["peak_rms"] > 1000


@pytest.mark.e2e
def test_a_listener_without_a_publisher_hears_nothing(livekit_netns: NamespacedLiveKit) -> None:
    room = f"test-silent-{secrets.token_hex(6)}"
    received = livekit_netns.run_python(
        probe_args(livekit_netns, "receive", room=room, options=["--frames", "1", "--timeout", "3"]),
        timeout=60,
    )
    assert received.returncode == 1
    assert json.loads(received.stdout.strip().splitlines()[-1])["non_silent_frames"] == 0


@pytest.mark.e2e
async def test_host_reaches_the_namespaced_server_api(livekit_netns: NamespacedLiveKit) -> None:
    name = f"test-room-{secrets.token_hex(6)}"
    async with api.LiveKitAPI(
        livekit_netns.host_http_url, livekit_netns.api_key, livekit_netns.api_secret
    ) as client:
        await client.room.create_room(api.CreateRoomRequest(name=name))
        listed = await client.room.list_rooms(api.ListRoomsRequest(names=[name]))
        await client.room.delete_room(api.DeleteRoomRequest(room=name))
    assert [room.name for room in listed.rooms] == [name]
