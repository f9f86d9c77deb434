/**
 * The narrow view of a LiveKit room that the test-call hook needs. The real one wraps
 * livekit-client (services/livekit-call-room.ts); unit tests give the hook a small fake, since no
 * LiveKit server runs in them.
 */

export type AgentState = "initializing" | "idle" | "listening" | "thinking" | "speaking";

export type RoomConnection = "connecting" | "connected" | "reconnecting" | "disconnected";

export type Speaker = "agent" | "user";

/** One transcript segment as it stands now: `text` is the whole segment so far, not a delta. */
export interface TranscriptUpdate {
  id: string;
  speaker: Speaker;
  text: string;
  final: boolean;
  /** `stream`: the lk.transcription text streams; `legacy`: RoomEvent.TranscriptionReceived. */
  source: "stream" | "legacy";
}

export interface CallRoomEvents {
  /** `disconnected` comes with why; `failed` tells a dropped connection from a call that was closed. */
  connectionChanged(state: RoomConnection, detail?: { reason: string; failed: boolean }): void;
  agentStateChanged(state: AgentState): void;
  agentJoined(): void;
  agentLeft(): void;
  agentAudioChanged(playing: boolean): void;
  transcriptUpdated(update: TranscriptUpdate): void;
  microphoneMutedChanged(muted: boolean): void;
  audioPlaybackChanged(allowed: boolean): void;
}

export type MicrophoneProblem = "denied" | "not_found" | "in_use" | "insecure_context" | "other";

export class MicrophoneError extends Error {
  readonly problem: MicrophoneProblem;

  constructor(problem: MicrophoneProblem, message: string) {
    super(message);
    this.name = "MicrophoneError";
    this.problem = problem;
  }
}

export interface CallRoom {
  /** Unlocks audio playback; must run inside the click that started the call (autoplay rules). */
  startAudio(): Promise<void>;
  /** Asks for the microphone before any token is spent; throws MicrophoneError. */
  prepareMicrophone(): Promise<void>;
  connect(serverUrl: string, token: string): Promise<void>;
  publishMicrophone(): Promise<void>;
  setMicrophoneMuted(muted: boolean): Promise<void>;
  disconnect(): Promise<void>;
}

export type CallRoomFactory = (events: CallRoomEvents) => CallRoom;

/** What the user reads when the microphone could not be opened, and what to do about it. */
export function describeMicrophoneProblem(problem: MicrophoneProblem): string {
  switch (problem) {
    case "denied":
      return (
        "Microphone access was blocked. Allow the microphone for this site (the icon at the left " +
        "of the address bar), then start the test call again."
      );
    case "not_found":
      return "No microphone was found. Connect a microphone, then start the test call again.";
    case "in_use":
      return "The microphone is in use by another application. Close it, then start the test call again.";
    case "insecure_context":
      return "Browsers only allow the microphone on HTTPS or localhost pages. Open the console over HTTPS.";
    case "other":
      return "The microphone could not be opened. Check your audio settings, then try again.";
  }
}
