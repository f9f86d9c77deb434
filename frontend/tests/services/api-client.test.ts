// @vitest-environment node
/** The API client against a real loopback server: paths, bodies, and FastAPI's 422 field errors. */

import { randomUUID } from "node:crypto";

import { afterEach, describe, expect, it } from "vitest";

import { createAgent, listAgents } from "@/services/agent-service";
import { ApiError, createApiClient, fieldErrorsFromValidation } from "@/services/api-client";
import { defaultAgentFormValues, validateAgentForm } from "@/lib/agent-form";
import { startLoopbackServer, type LoopbackServer, type ScriptedAnswer } from "../support/loopback-server";

let server: LoopbackServer | null = null;

afterEach(async () => {
  await server?.close();
  server = null;
});

async function clientFor(answer: ScriptedAnswer) {
  server = await startLoopbackServer(() => answer);
  return createApiClient({ baseUrl: `${server.baseUrl}/`, getAccessToken: () => "t" });
}

describe("api client", () => {
  it("sends paging as query parameters", async () => {
    const client = await clientFor({ status: 200, body: { items: [], total: 0, limit: 20, offset: 40 } });
    const orgId = randomUUID();

    const page = await listAgents(orgId, { limit: 20, offset: 40 }, client);

    expect(page.offset).toBe(40);
    expect(server?.requests[0]?.url).toBe(`/api/v1/orgs/${orgId}/agents?limit=20&offset=40`);
  });

  it("puts a 422's messages under the fields they name", async () => {
    const client = await clientFor({
      status: 422,
      body: {
        detail: [
          { loc: ["body", "name"], msg: "String should have at most 200 characters", type: "string_too_long" },
          { loc: ["body", "tools", 0, "url"], msg: "Input should be a valid URL", type: "url_parsing" },
        ],
      },
    });
    const { agent } = validateAgentForm({ ...defaultAgentFormValues, name: "Receptionist" });

    const error = await createAgent(randomUUID(), agent!, client).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(ApiError);
    const apiError = error as ApiError;
    expect(apiError.status).toBe(422);
    expect(apiError.fieldErrors.name).toEqual(["String should have at most 200 characters"]);
    expect(apiError.fieldErrors.tools).toEqual(["tools[0].url: Input should be a valid URL"]);
    expect(JSON.parse(server?.requests[0]?.body ?? "{}")).toMatchObject({ name: "Receptionist", tools: [] });
  });

  it("files issues without a field under _form", () => {
    expect(fieldErrorsFromValidation([{ loc: ["body"], msg: "Field required" }])).toEqual({ _form: ["Field required"] });
  });
});
