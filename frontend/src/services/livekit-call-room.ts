/**
 * The test call's room on livekit-client: joins with the token, plays the agent's audio, publishes
 * the microphone, and turns LiveKit's events (agent state attribute, transcription text streams,
 * disconnect reasons) into the CallRoomEvents the hook understands.
 */

import {
  ConnectionState,
  createLocalAudioTrack,
  DisconnectReason,
  MediaDeviceFailure,
  ParticipantKind,
  Room,
  RoomEvent,
  Track,
  type LocalAudioTrack,
  type Participant,
  type RemoteParticipant,
  type RemoteTrack,
  type TextStreamReader,
  type TranscriptionSegment,
} from "livekit-client";

import {
  MicrophoneError,
  type AgentState,
  type CallRoom,
  type CallRoomEvents,
  type CallRoomFactory,
  type MicrophoneProblem,
} from "@/lib/call-room";

/** Topic and attributes livekit-agents uses for transcriptions and the agent's state. */
export const TRANSCRIPTION_TOPIC = "lk.transcription";
const AGENT_STATE_ATTRIBUTE = "lk.agent.state";
const SEGMENT_ID_ATTRIBUTE = "lk.segment_id";
const TRANSCRIBED_TRACK_ATTRIBUTE = "lk.transcribed_track_id";
const FINAL_ATTRIBUTE = "lk.transcription_final";

const AGENT_STATES: ReadonlySet<string> = new Set(["initializing", "idle", "listening", "thinking", "speaking"]);

function isAgent(participant: Participant): boolean {
  return participant.kind === ParticipantKind.AGENT || AGENT_STATE_ATTRIBUTE in participant.attributes;
}

function microphoneProblem(error: unknown): MicrophoneProblem {
  switch (MediaDeviceFailure.getFailure(error)) {
    case MediaDeviceFailure.PermissionDenied:
      return "denied";
    case MediaDeviceFailure.NotFound:
      return "not_found";
    case MediaDeviceFailure.DeviceInUse:
      return "in_use";
    default:
      return "other";
  }
}

/** Why the room closed, in the user's words, and whether that was a failure or a normal end. */
function describeDisconnect(reason: DisconnectReason | undefined): { reason: string; failed: boolean } {
  switch (reason) {
    case DisconnectReason.CLIENT_INITIATED:
      return { reason: "You ended the call.", failed: false };
    case DisconnectReason.ROOM_DELETED:
    case DisconnectReason.ROOM_CLOSED:
      return { reason: "The call was closed by the server.", failed: false };
    case DisconnectReason.PARTICIPANT_REMOVED:
      return { reason: "You were removed from the call.", failed: false };
    case DisconnectReason.DUPLICATE_IDENTITY:
      return { reason: "The same test session was joined from another tab.", failed: true };
    case DisconnectReason.SERVER_SHUTDOWN:
      return { reason: "The media server shut down.", failed: true };
    case DisconnectReason.JOIN_FAILURE:
      return { reason: "Could not join the call room.", failed: true };
    case DisconnectReason.CONNECTION_TIMEOUT:
    case DisconnectReason.SIGNAL_CLOSE:
      return { reason: "The connection to the media server was lost.", failed: true };
    case DisconnectReason.MEDIA_FAILURE:
      return { reason: "Audio could not flow between the browser and the media server.", failed: true };
    default:
      return { reason: "The connection to the media server ended unexpectedly.", failed: true };
  }
}

export const createLiveKitCallRoom: CallRoomFactory = (events: CallRoomEvents): CallRoom => {
  const room = new Room({
    adaptiveStream: false,
    dynacast: false,
    disconnectOnPageLeave: true,
    audioCaptureDefaults: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  let microphone: LocalAudioTrack | null = null;
  let agentIdentity: string | null = null;
  let closed = false;

  function speakerOf(identity: string | undefined, transcribedTrackId: string | undefined) {
    const local = room.localParticipant;
    const isUser =
      identity === local.identity ||
      (transcribedTrackId !== undefined && local.trackPublications.has(transcribedTrackId));
    return isUser ? "user" : "agent";
  }

  function noticeParticipant(participant: RemoteParticipant) {
    if (!isAgent(participant) || agentIdentity === participant.identity) return;
    agentIdentity = participant.identity;
    events.agentJoined();
    const state = participant.attributes[AGENT_STATE_ATTRIBUTE];
    if (state && AGENT_STATES.has(state)) events.agentStateChanged(state as AgentState);
  }

  function detachAudio(track: RemoteTrack) {
    for (const element of track.detach()) element.remove();
  }

  async function readTranscription(reader: TextStreamReader, sender: { identity: string }) {
    const attributes = reader.info.attributes ?? {};
    const id = attributes[SEGMENT_ID_ATTRIBUTE] ?? reader.info.id;
    const speaker = speakerOf(sender.identity, attributes[TRANSCRIBED_TRACK_ATTRIBUTE]);
    const final = attributes[FINAL_ATTRIBUTE] === "true";
    let text = "";
    for await (const delta of reader) {
      text += delta;
      events.transcriptUpdated({ id, speaker, text, final, source: "stream" });
    }
    // An agent's segment streams as deltas and is complete when its stream closes.
    events.transcriptUpdated({ id, speaker, text, final: final || speaker === "agent", source: "stream" });
  }

  room.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, sender) => {
    readTranscription(reader, sender).catch(() => {
      // A stream cut off by a disconnect leaves the text read so far in place.
    });
  });

  room
    .on(RoomEvent.ConnectionStateChanged, (state: ConnectionState) => {
      if (state === ConnectionState.Connecting) events.connectionChanged("connecting");
      if (state === ConnectionState.Connected) events.connectionChanged("connected");
      if (state === ConnectionState.Reconnecting || state === ConnectionState.SignalReconnecting) {
        events.connectionChanged("reconnecting");
      }
    })
    .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => {
      events.connectionChanged("disconnected", describeDisconnect(reason));
    })
    .on(RoomEvent.ParticipantConnected, noticeParticipant)
    .on(RoomEvent.ParticipantDisconnected, (participant: RemoteParticipant) => {
      if (participant.identity !== agentIdentity) return;
      agentIdentity = null;
      events.agentLeft();
    })
    .on(RoomEvent.ParticipantAttributesChanged, (changed: Record<string, string>, participant: Participant) => {
      if (participant.isLocal) return;
      noticeParticipant(participant as RemoteParticipant);
      const state = changed[AGENT_STATE_ATTRIBUTE];
      if (state && AGENT_STATES.has(state)) events.agentStateChanged(state as AgentState);
    })
    .on(RoomEvent.TrackSubscribed, (track: RemoteTrack, _publication, participant: RemoteParticipant) => {
      if (track.kind !== Track.Kind.Audio) return;
      const element = track.attach();
      element.dataset.agentlineAudio = participant.identity;
      element.addEventListener("playing", () => events.agentAudioChanged(true));
      document.body.appendChild(element);
    })
    .on(RoomEvent.TrackUnsubscribed, (track: RemoteTrack) => {
      if (track.kind !== Track.Kind.Audio) return;
      detachAudio(track);
      events.agentAudioChanged(false);
    })
    .on(RoomEvent.TrackMuted, (publication, participant: Participant) => {
      if (participant.isLocal && publication.source === Track.Source.Microphone) events.microphoneMutedChanged(true);
    })
    .on(RoomEvent.TrackUnmuted, (publication, participant: Participant) => {
      if (participant.isLocal && publication.source === Track.Source.Microphone) events.microphoneMutedChanged(false);
    })
    .on(RoomEvent.AudioPlaybackStatusChanged, () => events.audioPlaybackChanged(room.canPlaybackAudio))
    .on(RoomEvent.TranscriptionReceived, (segments: TranscriptionSegment[], participant?: Participant) => {
      const speaker = participant?.isLocal ? "user" : "agent";
      for (const segment of segments) {
        events.transcriptUpdated({
          id: segment.id,
          speaker,
          text: segment.text,
          final: segment.final,
          source: "legacy",
        });
      }
    });

  return {
    async startAudio() {
      await room.startAudio();
    },

    async prepareMicrophone() {
      if (typeof navigator === "undefined" || !navigator.mediaDevices?.getUserMedia) {
        throw new MicrophoneError("insecure_context", "navigator.mediaDevices is not available");
      }
      let track: LocalAudioTrack;
      try {
        track = await createLocalAudioTrack({
          echoCancellation: true,
          noiseSuppression: true,
          autoGainControl: true,
        });
      } catch (error) {
        throw new MicrophoneError(microphoneProblem(error), error instanceof Error ? error.message : String(error));
      }
      // The call can end while the permission prompt is open; disconnect() had no track to stop then,
      // so a track granted afterwards is stopped here or the microphone stays on until reload.
      if (closed) track.stop();
      else microphone = track;
    },

    async connect(serverUrl: string, token: string) {
      await room.connect(serverUrl, token, { autoSubscribe: true });
      for (const participant of room.remoteParticipants.values()) noticeParticipant(participant);
    },

    async publishMicrophone() {
      if (!microphone) throw new MicrophoneError("other", "the microphone was not prepared");
      await room.localParticipant.publishTrack(microphone, { source: Track.Source.Microphone });
      events.microphoneMutedChanged(microphone.isMuted);
    },

    async setMicrophoneMuted(muted: boolean) {
      if (!microphone) return;
      if (muted) await microphone.mute();
      else await microphone.unmute();
    },

    async disconnect() {
      if (closed) return;
      closed = true;
      room.unregisterTextStreamHandler(TRANSCRIPTION_TOPIC);
      for (const participant of room.remoteParticipants.values()) {
        for (const publication of participant.audioTrackPublications.values()) {
          if (publication.track) detachAudio(publication.track);
        }
      }
      await room.disconnect(true);
      microphone?.stop();
      microphone = null;
    },
  };
};
