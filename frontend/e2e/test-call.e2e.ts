/**
 * The Test Agent call in a real browser against the running stack (gateway, registry,
 * token-service, LiveKit, worker with its models): nothing is faked between the browser and the
 * worker but the microphone, which plays a WAV file.
 */

import { join } from "node:path";

import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  agentAudioElementPlaying,
  e2eSettings,
  inboundAudio,
  instrumentPage,
  launchChromium,
  microphoneTracks,
  openPeerConnections,
  type E2ESettings,
} from "./browser";

interface AgentRead {
  id: string;
  name: string;
  active: boolean;
  first_message: string;
}

interface SessionRead {
  room_name: string;
  kind: string;
  status: string;
}

const settings: E2ESettings = e2eSettings();
let browser: Browser;
let context: BrowserContext;
let page: Page;
let apiToken: string;
const consoleMessages: string[] = [];

async function api<T>(path: string): Promise<T> {
  const response = await fetch(`${settings.baseUrl}/api/v1${path}`, {
    headers: { Authorization: `Bearer ${apiToken}`, Accept: "application/json" },
  });
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${await response.text()}`);
  return (await response.json()) as T;
}

/** Full pages, except while the modal is open: its fixed backdrop covers only the viewport. */
async function screenshot(name: string, { fullPage = true }: { fullPage?: boolean } = {}) {
  await page.screenshot({ path: join(settings.artifactsDir, name), fullPage });
}

/** Lower-case letters and digits only, so punctuation and spacing of the transcript do not matter. */
function normalised(text: string): string {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, " ").trim();
}

async function waitFor(description: string, check: () => Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  await screenshot(`failed-${description.replace(/[^a-z0-9]+/gi, "-")}.png`);
  throw new Error(`timed out after ${timeoutMs} ms waiting for: ${description}`);
}

beforeAll(async () => {
  const login = await fetch(`${settings.baseUrl}/api/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: settings.email, password: settings.password }),
  });
  if (!login.ok) throw new Error(`log-in through the gateway failed: ${login.status} ${await login.text()}`);
  apiToken = ((await login.json()) as { access_token: string }).access_token;

  browser = await launchChromium(settings);
  context = await browser.newContext({
    baseURL: settings.baseUrl,
    viewport: { width: 1280, height: 900 },
    permissions: ["microphone"],
  });
  page = await context.newPage();
  // `make up` serves the console with `next dev`, which compiles each page on its first visit.
  page.setDefaultNavigationTimeout(120_000);
  page.setDefaultTimeout(60_000);
  page.on("console", (message) => consoleMessages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleMessages.push(`pageerror: ${error.message}`));
  await instrumentPage(page);
});

afterAll(async () => {
  await context?.close();
  await browser?.close();
  if (consoleMessages.some((line) => line.startsWith("pageerror"))) {
    console.log(consoleMessages.join("\n"));
  }
});

describe("Test Agent call in the browser", () => {
  it("logs in, talks to the agent, mutes, and ends the call", async () => {
    const agent = await api<AgentRead>(`/agents/${settings.agentId}`);
    expect(agent.active, "the e2e agent must be active").toBe(true);
    expect(agent.first_message.trim(), "the e2e agent needs a first message to hear").not.toBe("");

    await page.goto("/login");
    await page.getByLabel("Email").fill(settings.email);
    await page.getByLabel("Password").fill(settings.password);
    await screenshot("01-login.png");
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    await page.waitForURL("**/agents");
    await page.getByRole("heading", { name: "Agents", exact: true }).waitFor();

    await page.goto(`/agents/${settings.agentId}`);
    await page.getByRole("heading", { name: agent.name }).first().waitFor();
    await page.getByText(/^\d+ total$/).waitFor();
    await screenshot("02-agent-page.png");

    await page.getByRole("button", { name: "Test Agent", exact: true }).click();
    const dialog = page.getByRole("dialog", { name: "Test call" });
    await dialog.waitFor();
    await waitFor(
      "the call to connect",
      async () => (await dialog.getAttribute("data-call-status")) === "connected",
      30_000,
    ).catch(async (error: Error) => {
      const status = await dialog.getAttribute("data-call-status");
      const alert = await dialog.getByRole("alert").allTextContents();
      throw new Error(`${error.message}; status ${status}; shown: ${alert.join(" ")}`);
    });
    const roomName = (await dialog.getAttribute("data-room-name")) ?? "";
    expect(roomName).toMatch(new RegExp(`^test_${settings.agentId}_[a-z0-9]{12}$`));

    const greeting = normalised(agent.first_message);
    await waitFor(
      "the agent's greeting in the transcript",
      async () => {
        const lines = await dialog.locator('[data-speaker="agent"]').allTextContents();
        return lines.some((line) => normalised(line).includes(greeting));
      },
      45_000,
    );
    await waitFor("the agent's audio element to play", () => agentAudioElementPlaying(page), 15_000);
    await waitFor("non-silent audio from the agent", async () => (await inboundAudio(page)).energy > 0, 15_000);
    expect(await dialog.getAttribute("data-agent-audio")).toBe("playing");
    await waitFor("the elapsed time to run", async () => (await dialog.getByLabel("Elapsed time").textContent()) !== "00:00", 5_000);
    await screenshot("03-live-call.png", { fullPage: false });

    const before = await microphoneTracks(page);
    expect(before.length).toBeGreaterThan(0);
    expect(before.every((track) => track.enabled)).toBe(true);
    await dialog.getByRole("button", { name: "Mute microphone", exact: true }).click();
    await waitFor("the microphone to be muted", async () => (await dialog.getAttribute("data-muted")) === "true", 5_000);
    const muted = await microphoneTracks(page);
    expect(muted.length).toBeGreaterThan(0);
    expect(muted.every((track) => !track.enabled)).toBe(true);
    await expect(dialog.getByRole("button", { name: "Unmute microphone", exact: true }).getAttribute("aria-pressed")).resolves.toBe("true");
    await screenshot("04-muted.png", { fullPage: false });

    await dialog.getByRole("button", { name: "End call", exact: true }).click();
    await waitFor("the call to end", async () => (await dialog.getAttribute("data-call-status")) === "ended", 10_000);
    await waitFor("the WebRTC connections to close", async () => (await openPeerConnections(page)) === 0, 10_000);
    expect(await microphoneTracks(page)).toEqual([]);
    expect(await page.locator("audio[data-agentline-audio]").count()).toBe(0);
    await screenshot("05-ended.png", { fullPage: false });

    let sessionsTotal = 0;
    await waitFor(
      "the session log to record the call as ended",
      async () => {
        const sessions = await api<{ items: SessionRead[]; total: number }>(
          `/agents/${settings.agentId}/sessions?limit=50&offset=0`,
        );
        sessionsTotal = sessions.total;
        const session = sessions.items.find((item) => item.room_name === roomName);
        return session?.kind === "test" && session.status === "ended";
      },
      30_000,
    );
    await dialog.getByRole("button", { name: "Close", exact: true }).click();
    // Closing the modal reloads the session log, which then lists this call first.
    await page.getByText(`${sessionsTotal} total`, { exact: true }).waitFor();
    const newest = page.getByRole("button", { name: /^Transcript \(/ }).first();
    await newest.click();
    await page.getByRole("list", { name: "Call transcript" }).waitFor();
    await screenshot("06-session-log.png");
  });
});
