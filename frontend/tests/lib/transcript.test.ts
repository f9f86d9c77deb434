import { describe, expect, it } from "vitest";

import { applyTranscriptUpdate, emptyTranscript, visibleTranscript } from "@/lib/transcript";
import type { TranscriptUpdate } from "@/lib/call-room";

function apply(updates: TranscriptUpdate[]) {
  return visibleTranscript(updates.reduce(applyTranscriptUpdate, emptyTranscript));
}

describe("transcript", () => {
  it("replaces a segment's text as it grows, keeping first-seen order", () => {
    const lines = apply([
      { id: "a", speaker: "agent", text: "Hel", final: false, source: "stream" },
      { id: "b", speaker: "user", text: "Hi", final: true, source: "stream" },
      { id: "a", speaker: "agent", text: "Hello there", final: true, source: "stream" },
    ]);
    expect(lines.map((line) => [line.id, line.text, line.final])).toEqual([
      ["a", "Hello there", true],
      ["b", "Hi", true],
    ]);
  });

  it("uses legacy transcriptions only while no text stream has arrived", () => {
    const legacy: TranscriptUpdate = { id: "x", speaker: "agent", text: "Hello", final: true, source: "legacy" };
    expect(apply([legacy]).map((line) => line.text)).toEqual(["Hello"]);
    expect(
      apply([legacy, { id: "y", speaker: "agent", text: "Hello", final: true, source: "stream" }]).map((line) => line.id),
    ).toEqual(["y"]);
  });

  it("drops blank segments", () => {
    expect(apply([{ id: "a", speaker: "user", text: "  ", final: false, source: "stream" }])).toEqual([]);
  });
});
