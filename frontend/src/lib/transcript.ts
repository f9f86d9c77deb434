/**
 * The live transcript of a call, built from the segments LiveKit delivers. livekit-agents sends a
 * segment as a text stream (topic lk.transcription) and may also send the older transcription
 * packets; when both arrive they describe the same speech, so once any text stream has been seen the
 * legacy packets are left out instead of showing every line twice.
 */

import type { Speaker, TranscriptUpdate } from "@/lib/call-room";

export interface TranscriptLine {
  id: string;
  speaker: Speaker;
  text: string;
  final: boolean;
}

export interface TranscriptState {
  stream: TranscriptLine[];
  legacy: TranscriptLine[];
}

export const emptyTranscript: TranscriptState = { stream: [], legacy: [] };

function upsert(lines: TranscriptLine[], update: TranscriptUpdate): TranscriptLine[] {
  const line: TranscriptLine = {
    id: update.id,
    speaker: update.speaker,
    text: update.text,
    final: update.final,
  };
  const index = lines.findIndex((existing) => existing.id === update.id);
  if (index === -1) return [...lines, line];
  const next = lines.slice();
  next[index] = line;
  return next;
}

export function applyTranscriptUpdate(state: TranscriptState, update: TranscriptUpdate): TranscriptState {
  return update.source === "stream"
    ? { ...state, stream: upsert(state.stream, update) }
    : { ...state, legacy: upsert(state.legacy, update) };
}

/** The lines to show: text-stream lines when there are any, else the legacy ones; blanks dropped. */
export function visibleTranscript(state: TranscriptState): TranscriptLine[] {
  const lines = state.stream.length > 0 ? state.stream : state.legacy;
  return lines.filter((line) => line.text.trim().length > 0);
}
