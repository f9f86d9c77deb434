"use client";

/**
 * One browser test call with an agent: microphone, a fresh token, the LiveKit room, and the state
 * the call modal shows. Each start() is a new call with its own token and room.
 */

import { useCallback, useEffect, useRef, useState } from "react";

import {
  describeMicrophoneProblem,
  MicrophoneError,
  type AgentState,
  type CallRoom,
  type CallRoomEvents,
  type CallRoomFactory,
} from "@/lib/call-room";
import { applyTranscriptUpdate, emptyTranscript, visibleTranscript, type TranscriptLine, type TranscriptState } from "@/lib/transcript";
import { getTestToken, TestTokenError } from "@/services/agent-service";
import { createLiveKitCallRoom } from "@/services/livekit-call-room";
import type { TestToken } from "@/services/types";

export type CallStatus = "idle" | "connecting" | "connected" | "reconnecting" | "ended" | "error";

export interface TestCallState {
  status: CallStatus;
  /** Why the call failed, in words the user can act on; set when status is "error". */
  error: string | null;
  /** How the call ended; set when status is "ended". */
  endReason: string | null;
  agentState: AgentState | null;
  agentPresent: boolean;
  agentAudioPlaying: boolean;
  transcript: TranscriptLine[];
  muted: boolean;
  /** The browser refused to start audio playback; enableAudio() from a click fixes it. */
  audioBlocked: boolean;
  connectedAt: number | null;
  roomName: string | null;
}

export interface TestCall extends TestCallState {
  start(): Promise<void>;
  end(): Promise<void>;
  setMuted(muted: boolean): Promise<void>;
  enableAudio(): Promise<void>;
}

export interface UseTestCallOptions {
  roomFactory?: CallRoomFactory;
  fetchToken?: (agentId: string) => Promise<TestToken>;
  /** Overrides the token's serverUrl (NEXT_PUBLIC_LIVEKIT_URL); empty means use the token's. */
  livekitUrl?: string;
}

interface InternalState extends Omit<TestCallState, "transcript"> {
  transcriptState: TranscriptState;
}

const initialState: InternalState = {
  status: "idle",
  error: null,
  endReason: null,
  agentState: null,
  agentPresent: false,
  agentAudioPlaying: false,
  transcriptState: emptyTranscript,
  muted: false,
  audioBlocked: false,
  connectedAt: null,
  roomName: null,
};

/** The statuses in which a call holds a room: it can be muted, and closing it means hanging up. */
export const LIVE_STATUSES: ReadonlySet<CallStatus> = new Set(["connecting", "connected", "reconnecting"]);

/** How long a joined call waits for the agent before it fails; dispatch normally takes a second or two. */
export const AGENT_JOIN_TIMEOUT_MS = 20_000;
const NO_AGENT_MESSAGE = "No agent joined the call. Check that an agent worker is running.";

function failedWith(state: InternalState, error: string): InternalState {
  return { ...state, status: "error", error, agentAudioPlaying: false };
}

function describeFailure(error: unknown): string {
  if (error instanceof TestTokenError) return error.actionMessage;
  if (error instanceof MicrophoneError) return describeMicrophoneProblem(error.problem);
  const message = error instanceof Error ? error.message : String(error);
  return `Could not connect to the call server: ${message}`;
}

export function useTestCall(agentId: string, options: UseTestCallOptions = {}): TestCall {
  const {
    roomFactory = createLiveKitCallRoom,
    fetchToken = getTestToken,
    livekitUrl = process.env.NEXT_PUBLIC_LIVEKIT_URL ?? "",
  } = options;
  const [state, setState] = useState<InternalState>(initialState);
  const roomRef = useRef<CallRoom | null>(null);
  // Every start() and end() bumps the attempt; events and awaits of an older attempt are ignored.
  const attemptRef = useRef(0);
  // Set once start() has finished joining; until then start() itself reports any failure.
  const joinedRef = useRef(false);

  const releaseRoom = useCallback(() => {
    const room = roomRef.current;
    roomRef.current = null;
    attemptRef.current += 1;
    return room ? room.disconnect().catch(() => undefined) : Promise.resolve();
  }, []);

  const eventsFor = useCallback(
    (attempt: number): CallRoomEvents => {
      const current = () => attempt === attemptRef.current;
      const update = (change: (previous: InternalState) => InternalState) => {
        if (current()) setState(change);
      };
      return {
        connectionChanged(connection, detail) {
          if (connection === "reconnecting") {
            update((s) => (s.status === "connected" ? { ...s, status: "reconnecting" } : s));
          } else if (connection === "connected") {
            update((s) => (s.status === "reconnecting" ? { ...s, status: "connected" } : s));
          } else if (connection === "disconnected" && current() && joinedRef.current) {
            // The room closed without end(): a dropped connection or the server closing the call.
            const reason = detail?.reason ?? "The call ended.";
            roomRef.current = null;
            attemptRef.current += 1;
            setState((s) =>
              detail?.failed
                ? failedWith(s, reason)
                : { ...s, status: "ended", endReason: reason, agentAudioPlaying: false },
            );
          }
        },
        agentStateChanged(agentState) {
          update((s) => ({ ...s, agentState }));
        },
        agentJoined() {
          update((s) => ({ ...s, agentPresent: true }));
        },
        agentLeft() {
          if (!current()) return;
          void releaseRoom();
          setState((s) => ({
            ...s,
            status: "ended",
            endReason: "The agent ended the call.",
            agentPresent: false,
            agentState: null,
            agentAudioPlaying: false,
          }));
        },
        agentAudioChanged(playing) {
          update((s) => ({ ...s, agentAudioPlaying: playing }));
        },
        transcriptUpdated(segment) {
          update((s) => ({ ...s, transcriptState: applyTranscriptUpdate(s.transcriptState, segment) }));
        },
        microphoneMutedChanged(muted) {
          update((s) => ({ ...s, muted }));
        },
        audioPlaybackChanged(allowed) {
          update((s) => ({ ...s, audioBlocked: !allowed }));
        },
      };
    },
    [releaseRoom],
  );

  const start = useCallback(async () => {
    if (roomRef.current) await releaseRoom();
    attemptRef.current += 1;
    const attempt = attemptRef.current;
    const stale = () => attempt !== attemptRef.current;
    joinedRef.current = false;
    setState({ ...initialState, status: "connecting" });

    const room = roomFactory(eventsFor(attempt));
    roomRef.current = room;
    // Called before any await so it runs inside the user's click, which browsers require to play audio.
    // Not awaited: a blocked AudioContext can stay pending, and audioBlocked reports it instead.
    void room.startAudio().catch(() => {
      if (!stale()) setState((s) => ({ ...s, audioBlocked: true }));
    });
    try {
      await room.prepareMicrophone();
      if (stale()) return;
      const token = await fetchToken(agentId);
      if (stale()) return;
      const serverUrl = livekitUrl || token.serverUrl;
      if (!serverUrl) {
        throw new Error("no LiveKit URL: the token service sent none and NEXT_PUBLIC_LIVEKIT_URL is not set.");
      }
      setState((s) => ({ ...s, roomName: token.roomName }));
      await room.connect(serverUrl, token.token);
      if (stale()) return;
      await room.publishMicrophone();
      if (stale()) return;
      joinedRef.current = true;
      setState((s) => (s.status === "connecting" ? { ...s, status: "connected", connectedAt: Date.now() } : s));
    } catch (error) {
      if (stale()) return;
      await releaseRoom();
      setState((s) => failedWith(s, describeFailure(error)));
    }
  }, [agentId, eventsFor, fetchToken, livekitUrl, releaseRoom, roomFactory]);

  const end = useCallback(async () => {
    const hadRoom = roomRef.current !== null;
    const closing = releaseRoom();
    if (hadRoom) {
      setState((s) =>
        LIVE_STATUSES.has(s.status)
          ? { ...s, status: "ended", endReason: "You ended the call.", agentAudioPlaying: false }
          : s,
      );
    }
    await closing;
  }, [releaseRoom]);

  const setMuted = useCallback(async (muted: boolean) => {
    await roomRef.current?.setMicrophoneMuted(muted);
  }, []);

  const enableAudio = useCallback(async () => {
    const room = roomRef.current;
    if (!room) return;
    try {
      await room.startAudio();
      setState((s) => ({ ...s, audioBlocked: false }));
    } catch {
      setState((s) => ({ ...s, audioBlocked: true }));
    }
  }, []);

  // LiveKit dispatches a worker when the room is created; with no worker running nobody ever joins,
  // and the user must be told why instead of watching "Waiting for the agent" forever.
  const waitingForAgent = state.status === "connected" && !state.agentPresent;
  useEffect(() => {
    if (!waitingForAgent) return;
    const deadline = setTimeout(() => {
      void releaseRoom();
      setState((s) => failedWith(s, NO_AGENT_MESSAGE));
    }, AGENT_JOIN_TIMEOUT_MS);
    return () => clearTimeout(deadline);
  }, [waitingForAgent, releaseRoom]);

  useEffect(() => {
    // Leaving the page must not leave a participant in the room until LiveKit times it out.
    const leave = () => void releaseRoom();
    window.addEventListener("pagehide", leave);
    window.addEventListener("beforeunload", leave);
    return () => {
      window.removeEventListener("pagehide", leave);
      window.removeEventListener("beforeunload", leave);
      void releaseRoom();
    };
  }, [releaseRoom]);

  const { transcriptState, ...rest } = state;
  return {
    ...rest,
    transcript: visibleTranscript(transcriptState),
    start,
    end,
    setMuted,
    enableAudio,
  };
}
