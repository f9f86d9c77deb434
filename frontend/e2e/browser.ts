/**
 * Debian's Chromium under playwright-core, set up for a test call: a fake microphone fed from a WAV
 * file, no background traffic (the network rule), and hooks that let the test look at the page's
 * real WebRTC connections and microphone tracks.
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { chromium, type Browser, type Page } from "playwright-core";

export interface E2ESettings {
  baseUrl: string;
  email: string;
  password: string;
  agentId: string;
  chromium: string;
  artifactsDir: string;
  audioWav: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (see scripts/e2e-browser.sh)`);
  return value;
}

/**
 * A mono 16-bit PCM WAV for when no recorded speech is given: 12 s of silence (Chromium loops the
 * file, and a caller talking from the start would interrupt the agent's greeting), a 2 s
 * speech-range tone, then 30 s of silence.
 */
function writeToneWav(path: string): void {
  const rate = 48_000;
  const seconds = 44;
  const samples = rate * seconds;
  const data = Buffer.alloc(samples * 2);
  for (let index = 0; index < samples; index += 1) {
    const t = index / rate;
    const speaking = t >= 12 && t < 14 ? 1 : 0;
    const value = speaking * 0.3 * Math.sin(2 * Math.PI * 220 * t) * Math.abs(Math.sin(2 * Math.PI * 3 * t));
    data.writeInt16LE(Math.round(value * 32_767), index * 2);
  }
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write("WAVE", 8);
  header.write("fmt ", 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20);
  header.writeUInt16LE(1, 22);
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write("data", 36);
  header.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([header, data]));
}

export function e2eSettings(): E2ESettings {
  const artifactsDir = process.env.E2E_ARTIFACTS_DIR || join(process.cwd(), "..", "test-artifacts", "e2e-browser");
  mkdirSync(artifactsDir, { recursive: true });
  let audioWav = process.env.E2E_AUDIO_WAV ?? "";
  if (!audioWav) {
    audioWav = join(artifactsDir, "fake-microphone.wav");
    writeToneWav(audioWav);
  }
  return {
    baseUrl: required("E2E_BASE_URL").replace(/\/+$/, ""),
    email: required("E2E_EMAIL"),
    password: required("E2E_PASSWORD"),
    agentId: required("E2E_AGENT_ID"),
    chromium: process.env.E2E_CHROMIUM || "/usr/bin/chromium",
    artifactsDir,
    audioWav,
  };
}

export async function launchChromium(settings: Pick<E2ESettings, "chromium" | "audioWav">): Promise<Browser> {
  return chromium.launch({
    executablePath: settings.chromium,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-quic",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-features=MediaRouter,OptimizationHints,Translate",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${settings.audioWav}`,
    ],
  });
}

/** Keeps every RTCPeerConnection and microphone track the page makes, for the test to inspect. */
export async function instrumentPage(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const probe = { peerConnections: [] as RTCPeerConnection[], microphoneTracks: [] as MediaStreamTrack[] };
    (window as unknown as { __agentlineProbe: typeof probe }).__agentlineProbe = probe;
    const Native = window.RTCPeerConnection;
    class TrackedPeerConnection extends Native {
      constructor(configuration?: RTCConfiguration) {
        super(configuration);
        probe.peerConnections.push(this);
      }
    }
    window.RTCPeerConnection = TrackedPeerConnection;
    const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = async (constraints) => {
      const stream = await getUserMedia(constraints);
      probe.microphoneTracks.push(...stream.getAudioTracks());
      return stream;
    };
  });
}

/** Audio received over WebRTC and decoded, summed over the page's open connections. */
export async function inboundAudio(page: Page): Promise<{ energy: number; samples: number }> {
  return page.evaluate(async () => {
    const probe = (window as unknown as { __agentlineProbe: { peerConnections: RTCPeerConnection[] } }).__agentlineProbe;
    let energy = 0;
    let samples = 0;
    for (const connection of probe.peerConnections) {
      if (connection.connectionState === "closed") continue;
      const report = await connection.getStats();
      report.forEach((entry: { type: string; kind?: string; totalAudioEnergy?: number; totalSamplesReceived?: number }) => {
        if (entry.type === "inbound-rtp" && entry.kind === "audio") {
          energy += entry.totalAudioEnergy ?? 0;
          samples += entry.totalSamplesReceived ?? 0;
        }
      });
    }
    return { energy, samples };
  });
}

/** Whether an attached agent audio element is playing a live track. */
export async function agentAudioElementPlaying(page: Page): Promise<boolean> {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll<HTMLAudioElement>("audio[data-agentline-audio]")).some((element) => {
      const stream = element.srcObject as MediaStream | null;
      return !element.paused && stream !== null && stream.getAudioTracks().some((track) => track.readyState === "live");
    }),
  );
}

/** The page's live microphone tracks and whether each is enabled (a muted track is disabled). */
export async function microphoneTracks(page: Page): Promise<{ enabled: boolean }[]> {
  return page.evaluate(() => {
    const probe = (window as unknown as { __agentlineProbe: { microphoneTracks: MediaStreamTrack[] } }).__agentlineProbe;
    return probe.microphoneTracks.filter((track) => track.readyState === "live").map((track) => ({ enabled: track.enabled }));
  });
}

export async function openPeerConnections(page: Page): Promise<number> {
  return page.evaluate(() => {
    const probe = (window as unknown as { __agentlineProbe: { peerConnections: RTCPeerConnection[] } }).__agentlineProbe;
    return probe.peerConnections.filter((connection) => connection.connectionState !== "closed").length;
  });
}
