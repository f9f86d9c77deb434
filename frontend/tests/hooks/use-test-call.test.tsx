/** The test-call hook's states, driven through a fake room and a scripted token source. */

import { act, renderHook, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { AGENT_JOIN_TIMEOUT_MS, useTestCall, type UseTestCallOptions } from "@/hooks/use-test-call";
import { MicrophoneError } from "@/lib/call-room";
import { TestTokenError } from "@/services/agent-service";
import { ApiError } from "@/services/api-client";
import type { TestToken } from "@/services/types";
import { fakeRooms, type FakeRoomBehaviour } from "../support/fake-call-room";

const AGENT_ID = "9b2f4a64-3f7e-4a57-9d3c-0c7f6f1e2a11";

function tokenSource() {
  let issued = 0;
  const fetchToken = vi.fn(async (agentId: string): Promise<TestToken> => {
    issued += 1;
    return {
      token: `token-${issued}`,
      serverUrl: "ws://127.0.0.1:7880",
      roomName: `test_${agentId}_room${issued}`,
      expiresAt: "2030-01-01T00:10:00Z",
    };
  });
  return fetchToken;
}

function setup(behaviour: () => FakeRoomBehaviour = () => ({}), options: Partial<UseTestCallOptions> = {}) {
  const rooms = fakeRooms(behaviour);
  const fetchToken = options.fetchToken ?? tokenSource();
  const hook = renderHook(() =>
    useTestCall(AGENT_ID, { roomFactory: rooms.factory, fetchToken, livekitUrl: "", ...options }),
  );
  return { ...rooms, fetchToken, hook };
}

describe("useTestCall", () => {
  it("starts idle", () => {
    const { hook } = setup();
    expect(hook.result.current.status).toBe("idle");
    expect(hook.result.current.transcript).toEqual([]);
  });

  it("unlocks audio inside the click, then microphone, token, connect and publish", async () => {
    const { hook, log, rooms } = setup();

    let pending!: Promise<void>;
    act(() => {
      pending = hook.result.current.start();
    });
    // Before any await: the browser's user-activation window is still open.
    expect(log).toEqual(["startAudio", "prepareMicrophone"]);
    expect(hook.result.current.status).toBe("connecting");
    await act(() => pending);

    expect(hook.result.current.status).toBe("connected");
    expect(hook.result.current.roomName).toBe(`test_${AGENT_ID}_room1`);
    expect(hook.result.current.connectedAt).not.toBeNull();
    expect(log).toEqual([
      "startAudio",
      "prepareMicrophone",
      "connect ws://127.0.0.1:7880 token-1",
      "publishMicrophone",
    ]);
    expect(rooms[0]?.connectedWith).toEqual({ serverUrl: "ws://127.0.0.1:7880", token: "token-1" });
  });

  it("uses the configured LiveKit URL over the token's", async () => {
    const { hook, rooms } = setup(undefined, { livekitUrl: "wss://media.example.test" });
    await act(() => hook.result.current.start());
    expect(rooms[0]?.connectedWith?.serverUrl).toBe("wss://media.example.test");
  });

  it("fetches a new token for every call", async () => {
    const { hook, fetchToken, rooms } = setup();

    await act(() => hook.result.current.start());
    await act(() => hook.result.current.end());
    expect(hook.result.current.status).toBe("ended");
    await act(() => hook.result.current.start());

    expect(fetchToken).toHaveBeenCalledTimes(2);
    expect(rooms).toHaveLength(2);
    expect(rooms[0]?.connectedWith?.token).toBe("token-1");
    expect(rooms[1]?.connectedWith?.token).toBe("token-2");
    expect(rooms[0]?.disconnects).toBe(1);
    expect(hook.result.current.status).toBe("connected");
  });

  it("ends in error with the reason when the connection fails", async () => {
    const { hook, rooms } = setup(() => ({
      connectError: new Error("could not establish signal connection: Failed to fetch"),
    }));

    await act(() => hook.result.current.start());

    expect(hook.result.current.status).toBe("error");
    expect(hook.result.current.error).toBe(
      "Could not connect to the call server: could not establish signal connection: Failed to fetch",
    );
    expect(rooms[0]?.disconnects).toBe(1);
  });

  it("shows the token service's actionable message, e.g. LiveKit not configured", async () => {
    const fetchToken = vi.fn(async () => {
      throw new TestTokenError(new ApiError({ status: 503, detail: "LiveKit is not configured" }));
    });
    const { hook, log } = setup(undefined, { fetchToken });

    await act(() => hook.result.current.start());

    expect(hook.result.current.status).toBe("error");
    expect(hook.result.current.error).toMatch(/LiveKit is not configured on the server/);
    expect(log).not.toContain("publishMicrophone");
    expect(log.at(-1)).toBe("disconnect");
  });

  it("explains a refused microphone and spends no token", async () => {
    const { hook, fetchToken } = setup(() => ({
      microphoneError: new MicrophoneError("denied", "Permission denied"),
    }));

    await act(() => hook.result.current.start());

    expect(hook.result.current.status).toBe("error");
    expect(hook.result.current.error).toMatch(/Microphone access was blocked/);
    expect(hook.result.current.error).toMatch(/Allow the microphone for this site/);
    expect(fetchToken).not.toHaveBeenCalled();
  });

  it("disconnects the room on unmount", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());

    hook.unmount();

    expect(rooms[0]?.disconnects).toBe(1);
  });

  it("disconnects a call still connecting on unmount, and ignores it finishing later", async () => {
    const { hook, rooms, log } = setup(() => ({ holdConnect: true }));
    act(() => {
      void hook.result.current.start();
    });
    await waitFor(() => expect(log.some((entry) => entry.startsWith("connect"))).toBe(true));

    hook.unmount();
    rooms[0]?.releaseConnect();
    await act(async () => {});

    expect(rooms[0]?.disconnects).toBe(1);
    expect(log).not.toContain("publishMicrophone");
  });

  it("disconnects when the page is left", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());

    act(() => {
      window.dispatchEvent(new Event("pagehide"));
    });

    expect(rooms[0]?.disconnects).toBe(1);
  });

  it("follows the agent's state and the live transcript", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());
    const events = rooms[0]!.events;

    act(() => {
      events.agentJoined();
      events.agentStateChanged("speaking");
      events.agentAudioChanged(true);
      events.transcriptUpdated({ id: "seg-1", speaker: "agent", text: "Hello", final: false, source: "stream" });
      events.transcriptUpdated({ id: "seg-1", speaker: "agent", text: "Hello! How can I help?", final: true, source: "stream" });
      events.transcriptUpdated({ id: "legacy-1", speaker: "agent", text: "Hello! How can I help?", final: true, source: "legacy" });
      events.transcriptUpdated({ id: "seg-2", speaker: "user", text: "What time is it?", final: true, source: "stream" });
    });

    const call = hook.result.current;
    expect(call.agentPresent).toBe(true);
    expect(call.agentState).toBe("speaking");
    expect(call.agentAudioPlaying).toBe(true);
    expect(call.transcript).toEqual([
      { id: "seg-1", speaker: "agent", text: "Hello! How can I help?", final: true },
      { id: "seg-2", speaker: "user", text: "What time is it?", final: true },
    ]);
  });

  it("mutes and unmutes the microphone through the room", async () => {
    const { hook, log } = setup();
    await act(() => hook.result.current.start());

    await act(() => hook.result.current.setMuted(true));
    expect(hook.result.current.muted).toBe(true);
    await act(() => hook.result.current.setMuted(false));

    expect(hook.result.current.muted).toBe(false);
    expect(log.slice(-2)).toEqual(["mute", "unmute"]);
  });

  it("goes through reconnecting and back to connected", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());

    act(() => rooms[0]!.events.connectionChanged("reconnecting"));
    expect(hook.result.current.status).toBe("reconnecting");
    act(() => rooms[0]!.events.connectionChanged("connected"));
    expect(hook.result.current.status).toBe("connected");
  });

  it("reports a dropped connection as an error with its reason", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());

    act(() =>
      rooms[0]!.events.connectionChanged("disconnected", {
        reason: "The connection to the media server was lost.",
        failed: true,
      }),
    );

    expect(hook.result.current.status).toBe("error");
    expect(hook.result.current.error).toBe("The connection to the media server was lost.");
  });

  it("ends the call when the agent leaves", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());
    act(() => rooms[0]!.events.agentJoined());

    act(() => rooms[0]!.events.agentLeft());

    expect(hook.result.current.status).toBe("ended");
    expect(hook.result.current.endReason).toBe("The agent ended the call.");
    expect(rooms[0]?.disconnects).toBe(1);
  });

  describe("when no agent joins", () => {
    afterEach(() => {
      vi.useRealTimers();
    });

    it("waits a bounded time, then ends in error with the reason", async () => {
      vi.useFakeTimers();
      const { hook, rooms } = setup();
      await act(() => hook.result.current.start());

      act(() => vi.advanceTimersByTime(AGENT_JOIN_TIMEOUT_MS - 1));
      expect(hook.result.current.status).toBe("connected");
      act(() => vi.advanceTimersByTime(1));

      expect(hook.result.current.status).toBe("error");
      expect(hook.result.current.error).toBe("No agent joined the call. Check that an agent worker is running.");
      expect(rooms[0]?.disconnects).toBe(1);
    });

    it("keeps the call once the agent has joined", async () => {
      vi.useFakeTimers();
      const { hook, rooms } = setup();
      await act(() => hook.result.current.start());

      act(() => rooms[0]!.events.agentJoined());
      act(() => vi.advanceTimersByTime(AGENT_JOIN_TIMEOUT_MS));

      expect(hook.result.current.status).toBe("connected");
      expect(rooms[0]?.disconnects).toBe(0);
    });
  });

  it("ignores events from a room it has already left", async () => {
    const { hook, rooms } = setup();
    await act(() => hook.result.current.start());
    await act(() => hook.result.current.end());

    act(() => rooms[0]!.events.agentStateChanged("thinking"));

    expect(hook.result.current.agentState).toBeNull();
    expect(hook.result.current.status).toBe("ended");
    expect(hook.result.current.endReason).toBe("You ended the call.");
  });
});
