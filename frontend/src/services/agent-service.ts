/** Agents, their session log and the Test Agent token, through the API gateway. */

import { api } from "@/services/api";
import { ApiError, type ApiClient } from "@/services/api-client";
import type { AgentCreate, AgentRead, AgentUpdate, Page, SessionRead, TestToken } from "@/services/types";

export interface Paging {
  limit: number;
  offset: number;
}

export function listAgents(orgId: string, paging: Paging, client: ApiClient = api): Promise<Page<AgentRead>> {
  return client.request(`/orgs/${encodeURIComponent(orgId)}/agents`, { query: { ...paging } });
}

export function getAgent(agentId: string, client: ApiClient = api): Promise<AgentRead> {
  return client.request(`/agents/${encodeURIComponent(agentId)}`);
}

export function createAgent(orgId: string, agent: AgentCreate, client: ApiClient = api): Promise<AgentRead> {
  return client.request(`/orgs/${encodeURIComponent(orgId)}/agents`, { method: "POST", body: agent });
}

export function updateAgent(agentId: string, changes: AgentUpdate, client: ApiClient = api): Promise<AgentRead> {
  return client.request(`/agents/${encodeURIComponent(agentId)}`, { method: "PATCH", body: changes });
}

export function setAgentActive(agentId: string, active: boolean, client: ApiClient = api): Promise<AgentRead> {
  const action = active ? "activate" : "deactivate";
  return client.request(`/agents/${encodeURIComponent(agentId)}/${action}`, { method: "POST" });
}

export function listSessions(agentId: string, paging: Paging, client: ApiClient = api): Promise<Page<SessionRead>> {
  return client.request(`/agents/${encodeURIComponent(agentId)}/sessions`, { query: { ...paging } });
}

export type TestTokenFailure =
  | "livekit_not_configured"
  | "service_unavailable"
  | "agent_inactive"
  | "rate_limited"
  | "forbidden"
  | "not_found"
  | "unauthorized"
  | "unreachable"
  | "unknown";

/**
 * Why a test call could not get its token, with a sentence that tells the user what to do about it;
 * `detail` keeps the server's own words.
 */
export class TestTokenError extends ApiError {
  readonly failure: TestTokenFailure;
  readonly actionMessage: string;

  constructor(source: ApiError) {
    super({
      status: source.status,
      detail: source.detail,
      fieldErrors: source.fieldErrors,
      retryAfterSeconds: source.retryAfterSeconds,
    });
    this.name = "TestTokenError";
    [this.failure, this.actionMessage] = explainTestTokenFailure(source);
    this.message = this.actionMessage;
  }
}

function explainTestTokenFailure(error: ApiError): [TestTokenFailure, string] {
  const detail = error.detail;
  switch (error.status) {
    case 0:
      return ["unreachable", `${detail} Check your connection and try again.`];
    case 401:
      return ["unauthorized", "Your session has expired. Sign in again to start a test call."];
    case 403:
      return ["forbidden", "You are not a member of this agent's organisation, so you cannot test it."];
    case 404:
      return ["not_found", "This agent no longer exists. It may have been deleted."];
    case 409:
      return ["agent_inactive", "This agent is inactive. Activate it, then start the test call again."];
    case 429: {
      const wait = error.retryAfterSeconds;
      const when = wait === null ? "in a moment" : `in ${wait} second${wait === 1 ? "" : "s"}`;
      return ["rate_limited", `Too many test calls in a short time. Try again ${when}.`];
    }
    case 502:
    case 504:
      return [
        "service_unavailable",
        `The token service did not answer properly (${detail}). Try again in a minute; if it persists, check that the token service is running.`,
      ];
    case 503:
      if (/livekit/i.test(detail) && /not configured/i.test(detail)) {
        return [
          "livekit_not_configured",
          "Test calls are unavailable because LiveKit is not configured on the server. " +
            "Ask your administrator to set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET " +
            "for the token service, then try again.",
        ];
      }
      return [
        "service_unavailable",
        `A service needed for test calls is unavailable right now (${detail}). Try again in a minute.`,
      ];
    default:
      return ["unknown", `The test call could not be started: ${detail}`];
  }
}

function isTestToken(value: unknown): value is TestToken {
  const candidate = value as Partial<Record<keyof TestToken, unknown>> | null;
  return (
    typeof candidate === "object" &&
    candidate !== null &&
    typeof candidate.token === "string" &&
    candidate.token.length > 0 &&
    typeof candidate.serverUrl === "string" &&
    typeof candidate.roomName === "string" &&
    typeof candidate.expiresAt === "string"
  );
}

/**
 * A fresh token for one test call of the agent. Never cached: each token belongs to one room and
 * one session that the token-service announces on the bus, so reusing one would join an old call.
 */
export async function getTestToken(agentId: string, client: ApiClient = api): Promise<TestToken> {
  let answer: unknown;
  try {
    answer = await client.request<unknown>(`/agents/${encodeURIComponent(agentId)}/test-token`, {
      method: "POST",
    });
  } catch (error) {
    if (error instanceof ApiError) throw new TestTokenError(error);
    throw error;
  }
  if (!isTestToken(answer)) {
    throw new TestTokenError(
      new ApiError({ status: 502, detail: "The token service answered without token, serverUrl, roomName and expiresAt." }),
    );
  }
  return {
    token: answer.token,
    serverUrl: answer.serverUrl,
    roomName: answer.roomName,
    expiresAt: answer.expiresAt,
  };
}
