import { describe, expect, it } from "vitest";

import { defaultAgentFormValues, parseTools, validateAgentForm } from "@/lib/agent-form";

const tool = {
  name: "lookup_order",
  description: "Find an order",
  url: "https://example.test/orders",
  parameters: { type: "object", properties: {} },
};

describe("agent form", () => {
  it("builds an AgentCreate from valid values", () => {
    const { agent, errors } = validateAgentForm({
      ...defaultAgentFormValues,
      name: " Front desk ",
      temperature: "0.3",
      tools: JSON.stringify([tool]),
    });
    expect(errors).toEqual({});
    expect(agent).toMatchObject({ name: "Front desk", temperature: 0.3, tools: [tool] });
  });

  it("names each field that is wrong", () => {
    const { agent, errors } = validateAgentForm({
      ...defaultAgentFormValues,
      name: "",
      language: "english please",
      temperature: "3",
      llm_model: " ",
    });
    expect(agent).toBeUndefined();
    expect(Object.keys(errors).sort()).toEqual(["language", "llm_model", "name", "temperature"]);
  });

  it("reports tools that are not JSON", () => {
    const { problems } = parseTools("[{");
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^Tools must be valid JSON: /);
  });

  it("reports each problem of each tool", () => {
    const { problems } = parseTools(
      JSON.stringify([
        tool,
        { name: "end_call", description: "", url: "ftp://x", method: "DELETE", timeout_seconds: 60, extra: 1, parameters: { type: "string" } },
      ]),
    );
    expect(problems).toEqual([
      'Tool 2: unknown field "extra".',
      'Tool 2: "end_call" is a built-in tool name.',
      "Tool 2: description is required (at most 1024 characters).",
      "Tool 2: url must be an http or https URL.",
      "Tool 2: method must be one of POST, PUT, PATCH, GET.",
      "Tool 2: timeout_seconds must be a number above 0 and at most 30.",
      'Tool 2: parameters must be a JSON Schema with "type": "object".',
    ]);
  });

  it("wants an array", () => {
    expect(parseTools('{"name": "x"}').problems).toEqual(["Tools must be a JSON array of tool objects."]);
    expect(parseTools("").problems).toEqual([]);
  });
});
