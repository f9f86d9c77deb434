/**
 * Stand-ins for the parts of livekit-client that services/livekit-call-room.ts calls, so its
 * wrapper logic runs in jsdom without a media server or a real microphone.
 */

import type { LocalAudioTrack } from "livekit-client";
import { vi } from "vitest";

type Handler = (...args: unknown[]) => void;

/** Replaces livekit-client's Room: records what was asked of it and lets a test emit room events. */
export class FakeLiveKitRoom {
  static instances: FakeLiveKitRoom[] = [];
  readonly log: string[] = [];
  readonly remoteParticipants = new Map<string, unknown>();
  readonly localParticipant = {
    identity: "user",
    trackPublications: new Map<string, unknown>(),
    publishTrack: async (track: unknown) => {
      this.log.push("publishTrack");
      this.published.push(track);
    },
  };
  readonly published: unknown[] = [];
  canPlaybackAudio = true;
  private readonly handlers = new Map<string, Handler>();

  constructor() {
    FakeLiveKitRoom.instances.push(this);
  }

  on(event: string, handler: Handler) {
    this.handlers.set(event, handler);
    return this;
  }

  emit(event: string, ...args: unknown[]) {
    this.handlers.get(event)?.(...args);
  }

  registerTextStreamHandler() {}

  unregisterTextStreamHandler() {}

  async connect() {
    this.log.push("connect");
  }

  async disconnect() {
    this.log.push("disconnect");
  }

  async startAudio() {}
}

/** A microphone track whose stop() a test can inspect. */
export function fakeMicrophoneTrack() {
  const track = { isMuted: false, stop: vi.fn(), mute: vi.fn(), unmute: vi.fn() };
  return track as typeof track & LocalAudioTrack;
}
