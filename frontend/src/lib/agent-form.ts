/**
 * The agent form's values and the checks made before anything is sent. The server validates again
 * and its 422 messages are shown beside the same fields; these checks only catch mistakes early.
 */

import type { FieldErrors } from "@/services/api-client";
import type { AgentCreate, AgentRead, WebhookTool } from "@/services/types";

export interface AgentFormValues {
  name: string;
  instructions: string;
  first_message: string;
  language: string;
  voice: string;
  stt_model: string;
  llm_model: string;
  tts_model: string;
  temperature: string;
  tools: string;
}

export type AgentFormField = keyof AgentFormValues;

export const defaultAgentFormValues: AgentFormValues = {
  name: "",
  instructions: "You are a helpful voice assistant. Keep your answers short and friendly.",
  first_message: "Hello! How can I help you today?",
  language: "en",
  voice: "alloy",
  stt_model: "whisper-1",
  llm_model: "gpt-4o-mini",
  tts_model: "tts-1",
  temperature: "0.7",
  tools: "[]",
};

export function formValuesFromAgent(agent: AgentRead): AgentFormValues {
  return {
    name: agent.name,
    instructions: agent.instructions,
    first_message: agent.first_message,
    language: agent.language,
    voice: agent.voice,
    stt_model: agent.stt_model,
    llm_model: agent.llm_model,
    tts_model: agent.tts_model,
    temperature: String(agent.temperature),
    tools: JSON.stringify(agent.tools, null, 2),
  };
}

const TOOL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]{0,63}$/;
const SECRET_REF = /^[A-Za-z0-9_.-]{1,64}$/;
const LANGUAGE = /^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$/;
const TOOL_KEYS = new Set(["type", "name", "description", "parameters", "url", "method", "timeout_seconds", "secret_ref"]);
const METHODS = new Set(["POST", "PUT", "PATCH", "GET"]);

function isHttpUrl(value: unknown): boolean {
  if (typeof value !== "string") return false;
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}

function toolProblems(tool: unknown, index: number): string[] {
  const where = `Tool ${index + 1}`;
  if (typeof tool !== "object" || tool === null || Array.isArray(tool)) {
    return [`${where} must be an object.`];
  }
  const entry = tool as Record<string, unknown>;
  const problems: string[] = [];
  for (const key of Object.keys(entry)) {
    if (!TOOL_KEYS.has(key)) problems.push(`${where}: unknown field "${key}".`);
  }
  if (entry.type !== undefined && entry.type !== "webhook") problems.push(`${where}: type must be "webhook".`);
  if (typeof entry.name !== "string" || !TOOL_NAME.test(entry.name)) {
    problems.push(`${where}: name must start with a letter or _ and use only letters, digits and _ (at most 64).`);
  } else if (entry.name === "end_call") {
    problems.push(`${where}: "end_call" is a built-in tool name.`);
  }
  if (typeof entry.description !== "string" || entry.description.trim() === "" || entry.description.length > 1024) {
    problems.push(`${where}: description is required (at most 1024 characters).`);
  }
  if (!isHttpUrl(entry.url)) problems.push(`${where}: url must be an http or https URL.`);
  if (entry.method !== undefined && !METHODS.has(String(entry.method))) {
    problems.push(`${where}: method must be one of POST, PUT, PATCH, GET.`);
  }
  if (
    entry.timeout_seconds !== undefined &&
    (typeof entry.timeout_seconds !== "number" || entry.timeout_seconds <= 0 || entry.timeout_seconds > 30)
  ) {
    problems.push(`${where}: timeout_seconds must be a number above 0 and at most 30.`);
  }
  if (entry.parameters !== undefined) {
    const parameters = entry.parameters as Record<string, unknown> | null;
    if (typeof parameters !== "object" || parameters === null || Array.isArray(parameters) || parameters.type !== "object") {
      problems.push(`${where}: parameters must be a JSON Schema with "type": "object".`);
    }
  }
  if (entry.secret_ref !== undefined && entry.secret_ref !== null) {
    if (typeof entry.secret_ref !== "string" || !SECRET_REF.test(entry.secret_ref)) {
      problems.push(`${where}: secret_ref names a secret (letters, digits, _ . -), never the secret itself.`);
    }
  }
  return problems;
}

export function parseTools(text: string): { tools?: WebhookTool[]; problems: string[] } {
  const source = text.trim() === "" ? "[]" : text;
  let parsed: unknown;
  try {
    parsed = JSON.parse(source);
  } catch (error) {
    return { problems: [`Tools must be valid JSON: ${error instanceof Error ? error.message : String(error)}`] };
  }
  if (!Array.isArray(parsed)) return { problems: ["Tools must be a JSON array of tool objects."] };
  const problems = parsed.flatMap((tool, index) => toolProblems(tool, index));
  return problems.length > 0 ? { problems } : { tools: parsed as WebhookTool[], problems };
}

export function validateAgentForm(values: AgentFormValues): { agent?: AgentCreate; errors: FieldErrors } {
  const errors: FieldErrors = {};
  const add = (field: AgentFormField, message: string) => (errors[field] ??= []).push(message);

  if (values.name.trim() === "") add("name", "Name is required.");
  else if (values.name.length > 200) add("name", "Name must be at most 200 characters.");
  if (values.instructions.trim() === "") add("instructions", "Instructions are required: they tell the agent how to behave.");
  if (!LANGUAGE.test(values.language.trim())) add("language", "Use a language code such as en or en-US.");
  for (const field of ["voice", "stt_model", "llm_model", "tts_model"] as const) {
    if (values[field].trim() === "") add(field, "This field is required.");
  }
  const temperature = Number(values.temperature);
  if (values.temperature.trim() === "" || !Number.isFinite(temperature) || temperature < 0 || temperature > 2) {
    add("temperature", "Temperature must be a number from 0 to 2.");
  }
  const { tools, problems } = parseTools(values.tools);
  for (const problem of problems) add("tools", problem);

  if (Object.keys(errors).length > 0 || !tools) return { errors };
  return {
    errors,
    agent: {
      name: values.name.trim(),
      instructions: values.instructions,
      first_message: values.first_message,
      language: values.language.trim(),
      voice: values.voice.trim(),
      stt_model: values.stt_model.trim(),
      llm_model: values.llm_model.trim(),
      tts_model: values.tts_model.trim(),
      temperature,
      tools,
    },
  };
}
