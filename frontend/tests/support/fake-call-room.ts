/**
 * An in-memory CallRoom for the hook's unit tests (no LiveKit server runs in them). It records what
 * the hook asked of it and lets a test play the room's side: agent joins, transcripts, disconnects.
 */

import type { CallRoom, CallRoomEvents, CallRoomFactory } from "@/lib/call-room";

export interface FakeRoomBehaviour {
  microphoneError?: Error;
  connectError?: Error;
  /** Keeps connect() pending until the test calls `releaseConnect()`. */
  holdConnect?: boolean;
}

export class FakeCallRoom implements CallRoom {
  readonly events: CallRoomEvents;
  readonly log: string[];
  private readonly behaviour: FakeRoomBehaviour;
  private pendingConnect: (() => void) | null = null;
  connectedWith: { serverUrl: string; token: string } | null = null;
  disconnects = 0;

  constructor(events: CallRoomEvents, log: string[], behaviour: FakeRoomBehaviour) {
    this.events = events;
    this.log = log;
    this.behaviour = behaviour;
  }

  async startAudio() {
    this.log.push("startAudio");
  }

  async prepareMicrophone() {
    this.log.push("prepareMicrophone");
    if (this.behaviour.microphoneError) throw this.behaviour.microphoneError;
  }

  async connect(serverUrl: string, token: string) {
    this.log.push(`connect ${serverUrl} ${token}`);
    if (this.behaviour.holdConnect) {
      await new Promise<void>((resolve) => {
        this.pendingConnect = resolve;
      });
    }
    if (this.behaviour.connectError) throw this.behaviour.connectError;
    this.connectedWith = { serverUrl, token };
    this.events.connectionChanged("connected");
  }

  releaseConnect() {
    this.pendingConnect?.();
  }

  async publishMicrophone() {
    this.log.push("publishMicrophone");
    this.events.microphoneMutedChanged(false);
  }

  async setMicrophoneMuted(muted: boolean) {
    this.log.push(muted ? "mute" : "unmute");
    this.events.microphoneMutedChanged(muted);
  }

  async disconnect() {
    this.log.push("disconnect");
    this.disconnects += 1;
  }
}

export function fakeRooms(behaviour: () => FakeRoomBehaviour = () => ({})) {
  const rooms: FakeCallRoom[] = [];
  const log: string[] = [];
  const factory: CallRoomFactory = (events) => {
    const room = new FakeCallRoom(events, log, behaviour());
    rooms.push(room);
    return room;
  };
  return { factory, rooms, log };
}
