/** The livekit-client wrapper, over a fake Room and a fake microphone (no media server runs here). */

import { createLocalAudioTrack, DisconnectReason, RoomEvent, type LocalAudioTrack } from "livekit-client";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { MicrophoneError, type CallRoomEvents } from "@/lib/call-room";
import { createLiveKitCallRoom } from "@/services/livekit-call-room";
import { fakeMicrophoneTrack, FakeLiveKitRoom } from "../support/fake-livekit";

vi.mock("livekit-client", async (importOriginal) => ({
  ...(await importOriginal<typeof import("livekit-client")>()),
  Room: (await import("../support/fake-livekit")).FakeLiveKitRoom,
  createLocalAudioTrack: vi.fn(),
}));

function recordingEvents() {
  return {
    connectionChanged: vi.fn(),
    agentStateChanged: vi.fn(),
    agentJoined: vi.fn(),
    agentLeft: vi.fn(),
    agentAudioChanged: vi.fn(),
    transcriptUpdated: vi.fn(),
    microphoneMutedChanged: vi.fn(),
    audioPlaybackChanged: vi.fn(),
  } satisfies CallRoomEvents;
}

/** Keeps the microphone request pending, as while the browser's permission prompt is open. */
function pendingMicrophone() {
  let grant!: (track: LocalAudioTrack) => void;
  vi.mocked(createLocalAudioTrack).mockReturnValue(new Promise((resolve) => (grant = resolve)));
  return (track: LocalAudioTrack) => grant(track);
}

function lastRoom(): FakeLiveKitRoom {
  const room = FakeLiveKitRoom.instances.at(-1);
  if (!room) throw new Error("no room was created");
  return room;
}

beforeEach(() => {
  FakeLiveKitRoom.instances = [];
  Object.defineProperty(navigator, "mediaDevices", { configurable: true, value: { getUserMedia: vi.fn() } });
});

afterEach(() => {
  Reflect.deleteProperty(navigator, "mediaDevices");
});

describe("createLiveKitCallRoom", () => {
  it("publishes the prepared microphone and stops it on disconnect", async () => {
    const track = fakeMicrophoneTrack();
    vi.mocked(createLocalAudioTrack).mockResolvedValue(track);
    const events = recordingEvents();
    const room = createLiveKitCallRoom(events);

    await room.prepareMicrophone();
    await room.connect("ws://127.0.0.1:7880", "token");
    await room.publishMicrophone();
    await room.disconnect();

    expect(lastRoom().published).toEqual([track]);
    expect(events.microphoneMutedChanged).toHaveBeenCalledWith(false);
    expect(track.stop).toHaveBeenCalledOnce();
  });

  it("stops a microphone granted after the call was ended during the permission prompt", async () => {
    const grant = pendingMicrophone();
    const track = fakeMicrophoneTrack();
    const room = createLiveKitCallRoom(recordingEvents());

    const preparing = room.prepareMicrophone();
    await room.disconnect();
    grant(track);
    await preparing;

    expect(track.stop).toHaveBeenCalledOnce();
    await expect(room.publishMicrophone()).rejects.toBeInstanceOf(MicrophoneError);
    expect(lastRoom().published).toEqual([]);
  });

  it("reports a refused microphone as a MicrophoneError the user can act on", async () => {
    vi.mocked(createLocalAudioTrack).mockRejectedValue(new DOMException("Permission denied", "NotAllowedError"));
    const room = createLiveKitCallRoom(recordingEvents());

    await expect(room.prepareMicrophone()).rejects.toMatchObject({ name: "MicrophoneError", problem: "denied" });
  });

  it("tells a failed disconnect from a normal end", () => {
    const events = recordingEvents();
    createLiveKitCallRoom(events);

    lastRoom().emit(RoomEvent.Disconnected, DisconnectReason.CLIENT_INITIATED);
    lastRoom().emit(RoomEvent.Disconnected, DisconnectReason.SIGNAL_CLOSE);

    expect(events.connectionChanged.mock.calls).toEqual([
      ["disconnected", { reason: "You ended the call.", failed: false }],
      ["disconnected", { reason: "The connection to the media server was lost.", failed: true }],
    ]);
  });
});
