// @vitest-environment node
/**
 * getTestToken against a real HTTP server on loopback: the request the token-service receives and
 * how each of its answers reaches the caller.
 */

import { randomUUID } from "node:crypto";

import { afterEach, describe, expect, it, vi } from "vitest";

import { getTestToken, TestTokenError } from "@/services/agent-service";
import { createApiClient } from "@/services/api-client";
import { startLoopbackServer, type LoopbackServer, type ScriptedAnswer } from "../support/loopback-server";

let server: LoopbackServer | null = null;

afterEach(async () => {
  await server?.close();
  server = null;
});

async function serve(answer: ScriptedAnswer | (() => ScriptedAnswer)) {
  server = await startLoopbackServer(typeof answer === "function" ? answer : () => answer);
  const onUnauthorized = vi.fn();
  const accessToken = `user-token-${randomUUID()}`;
  const client = createApiClient({ baseUrl: server.baseUrl, getAccessToken: () => accessToken, onUnauthorized });
  return { client, onUnauthorized, accessToken, server };
}

async function failure(promise: Promise<unknown>): Promise<TestTokenError> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(TestTokenError);
  return error as TestTokenError;
}

describe("getTestToken", () => {
  it("getTestToken returns test token data", async () => {
    const agentId = randomUUID();
    const token = {
      token: `lk-${randomUUID()}`,
      serverUrl: "ws://127.0.0.1:7880",
      roomName: `test_${agentId}_abcdefghijkl`,
      expiresAt: "2030-01-01T00:10:00Z",
    };
    const { client, accessToken, server: http } = await serve({ status: 200, body: token });

    const answer = await getTestToken(agentId, client);

    expect(answer).toEqual(token);
    expect(http.requests).toHaveLength(1);
    const [request] = http.requests;
    expect(request?.method).toBe("POST");
    expect(request?.url).toBe(`/api/v1/agents/${agentId}/test-token`);
    expect(request?.headers.authorization).toBe(`Bearer ${accessToken}`);
  });

  it("asks the server again on every call instead of reusing a token", async () => {
    let issued = 0;
    const { client, server: http } = await serve(() => {
      issued += 1;
      return {
        status: 200,
        body: { token: `token-${issued}`, serverUrl: "ws://127.0.0.1:7880", roomName: `room-${issued}`, expiresAt: "2030-01-01T00:00:00Z" },
      };
    });
    const agentId = randomUUID();

    const first = await getTestToken(agentId, client);
    const second = await getTestToken(agentId, client);

    expect(http.requests).toHaveLength(2);
    expect(first.token).toBe("token-1");
    expect(second.token).toBe("token-2");
    expect(second.roomName).not.toBe(first.roomName);
  });

  it("turns 503 LiveKit not configured into a message the user can act on", async () => {
    const { client } = await serve({ status: 503, body: { detail: "LiveKit is not configured" } });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.status).toBe(503);
    expect(error.detail).toBe("LiveKit is not configured");
    expect(error.failure).toBe("livekit_not_configured");
    expect(error.actionMessage).toMatch(/LiveKit is not configured/);
    expect(error.actionMessage).toMatch(/LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET/);
  });

  it("keeps the server's words for any other 503", async () => {
    const { client } = await serve({ status: 503, body: { detail: "agent registry did not answer within 2.0 s" } });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.failure).toBe("service_unavailable");
    expect(error.actionMessage).toContain("agent registry did not answer within 2.0 s");
  });

  it("explains an inactive agent (409)", async () => {
    const { client } = await serve({ status: 409, body: { detail: "agent is inactive" } });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.status).toBe(409);
    expect(error.detail).toBe("agent is inactive");
    expect(error.failure).toBe("agent_inactive");
    expect(error.actionMessage).toMatch(/Activate it/);
  });

  it("tells how long to wait after a 429 with Retry-After", async () => {
    const { client } = await serve({
      status: 429,
      body: { detail: "too many test tokens" },
      headers: { "Retry-After": "17" },
    });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.failure).toBe("rate_limited");
    expect(error.retryAfterSeconds).toBe(17);
    expect(error.actionMessage).toContain("in 17 seconds");
  });

  it("reports 403 and 404 distinctly", async () => {
    const forbidden = await serve({ status: 403, body: { detail: "not a member of this organisation" } });
    expect((await failure(getTestToken(randomUUID(), forbidden.client))).failure).toBe("forbidden");
    await forbidden.server.close();

    const missing = await serve({ status: 404, body: { detail: "agent not found" } });
    const error = await failure(getTestToken(randomUUID(), missing.client));
    expect(error.failure).toBe("not_found");
    expect(error.detail).toBe("agent not found");
  });

  it("signals an expired session on 401", async () => {
    const { client, onUnauthorized } = await serve({ status: 401, body: { detail: "token expired" } });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.failure).toBe("unauthorized");
    expect(onUnauthorized).toHaveBeenCalledTimes(1);
  });

  it("treats the gateway's HTML 502 as the token service being unavailable", async () => {
    const { client } = await serve({ status: 502, body: "<html><body>502 Bad Gateway</body></html>" });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.status).toBe(502);
    expect(error.failure).toBe("service_unavailable");
  });

  it("refuses an answer that is not a test token", async () => {
    const { client } = await serve({ status: 200, body: { token: "x" } });

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.actionMessage).toMatch(/token, serverUrl, roomName and expiresAt/);
  });

  it("says the server cannot be reached when nothing listens", async () => {
    const { client, server: http } = await serve({ status: 200, body: {} });
    await http.close();
    server = null;

    const error = await failure(getTestToken(randomUUID(), client));

    expect(error.status).toBe(0);
    expect(error.failure).toBe("unreachable");
    expect(error.actionMessage).toMatch(/Cannot reach the server/);
  });
});
