/** Shapes of the registry's and token-service's JSON, as docs/architecture.md pins them. */

export type Role = "owner" | "admin" | "member";

export interface Membership {
  org_id: string;
  org_name: string;
  role: Role;
}

export interface CurrentUser {
  id: string;
  email: string;
  name: string | null;
  memberships: Membership[];
}

export interface LoginResponse {
  access_token: string;
  token_type: "bearer";
  expires_at: string;
}

export interface WebhookTool {
  type?: "webhook";
  name: string;
  description: string;
  parameters?: Record<string, unknown>;
  url: string;
  method?: "POST" | "PUT" | "PATCH" | "GET";
  timeout_seconds?: number;
  secret_ref?: string | null;
}

export interface AgentCreate {
  name: string;
  instructions: string;
  first_message: string;
  language: string;
  voice: string;
  stt_model: string;
  llm_model: string;
  tts_model: string;
  temperature: number;
  tools: WebhookTool[];
}

export type AgentUpdate = Partial<AgentCreate>;

export interface AgentRead extends AgentCreate {
  id: string;
  org_id: string;
  active: boolean;
  phone_numbers: string[];
  created_at: string;
  updated_at: string;
}

export interface Page<T> {
  items: T[];
  total: number;
  limit: number;
  offset: number;
}

export interface TranscriptEntry {
  role: "user" | "agent";
  text: string;
  at: string;
}

export interface TurnMetrics {
  latency_ms: number | null;
  stt_ms?: number | null;
  llm_ttft_ms?: number | null;
  tts_ttfb_ms?: number | null;
}

export type SessionStatus = "requested" | "active" | "ended" | "failed" | "expired";

export interface SessionRead {
  id: string;
  org_id: string;
  agent_id: string;
  kind: "test" | "phone";
  room_name: string;
  status: SessionStatus;
  requested_at: string | null;
  started_at: string | null;
  ended_at: string | null;
  from_number: string | null;
  to_number: string | null;
  end_reason: string | null;
  /** Why the call ended, in words (e.g. which dependency failed), when the worker said. */
  end_detail: string | null;
  duration_seconds: number | null;
  transcript: TranscriptEntry[];
  turns: TurnMetrics[];
}

export interface TestToken {
  token: string;
  serverUrl: string;
  roomName: string;
  expiresAt: string;
}
