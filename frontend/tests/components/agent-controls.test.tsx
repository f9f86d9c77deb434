/** The Test Agent button's disabled state and the agent form's messages beside their fields. */

import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { AgentForm } from "@/components/agents/agent-form";
import { TestAgentButton } from "@/components/agents/test-agent-button";
import { defaultAgentFormValues } from "@/lib/agent-form";
import { ApiError } from "@/services/api-client";

describe("TestAgentButton", () => {
  it("starts a call for an active agent", async () => {
    const onStart = vi.fn();
    render(<TestAgentButton active onStart={onStart} />);

    await userEvent.setup().click(screen.getByRole("button", { name: "Test Agent" }));

    expect(onStart).toHaveBeenCalledTimes(1);
  });

  it("is disabled with the reason for an inactive agent", () => {
    render(<TestAgentButton active={false} onStart={vi.fn()} />);

    const button = screen.getByRole("button", { name: "Test Agent" });
    expect(button).toBeDisabled();
    expect(button).toHaveAccessibleDescription("This agent is inactive. Activate it to start a test call.");
  });
});

describe("AgentForm", () => {
  function renderForm(onSubmit = vi.fn(async () => {})) {
    render(
      <AgentForm initialValues={defaultAgentFormValues} submitLabel="Create agent" onSubmit={onSubmit} onCancel={vi.fn()} />,
    );
    return { onSubmit, user: userEvent.setup() };
  }

  it("does not send a form with invalid tools JSON, and says why beside the field", async () => {
    const { onSubmit, user } = renderForm();
    await user.type(screen.getByLabelText("Name"), "Front desk");
    const tools = screen.getByLabelText("Webhook tools (JSON)");
    await user.clear(tools);
    await user.type(tools, "[[{{");

    await user.click(screen.getByRole("button", { name: "Create agent" }));

    expect(onSubmit).not.toHaveBeenCalled();
    expect(tools).toHaveAttribute("aria-invalid", "true");
    expect(tools).toHaveAccessibleDescription(expect.stringContaining("Tools must be valid JSON"));
  });

  it("shows the server's 422 messages next to their fields", async () => {
    const onSubmit = vi.fn(async () => {
      throw new ApiError({
        status: 422,
        detail: "name: too long",
        fieldErrors: { name: ["String should have at most 200 characters"], voice: ["Unknown voice 'robot'"] },
      });
    });
    const { user } = renderForm(onSubmit);
    await user.type(screen.getByLabelText("Name"), "Front desk");

    await user.click(screen.getByRole("button", { name: "Create agent" }));

    expect(onSubmit).toHaveBeenCalledTimes(1);
    expect(screen.getByLabelText("Name")).toHaveAccessibleDescription("String should have at most 200 characters");
    expect(screen.getByLabelText("Voice")).toHaveAccessibleDescription("Unknown voice 'robot'");
    expect(screen.getByLabelText("Voice")).toHaveAttribute("aria-invalid", "true");
  });
});
