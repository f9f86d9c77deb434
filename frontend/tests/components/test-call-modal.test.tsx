/** The test-call modal's controls and keyboard behaviour, over a scripted call state. */

import { render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { formatElapsed, TestCallModal } from "@/components/agents/test-call-modal";
import type { TestCall } from "@/hooks/use-test-call";

function callState(overrides: Partial<TestCall> = {}): TestCall {
  return {
    status: "connected",
    error: null,
    endReason: null,
    agentState: "listening",
    agentPresent: true,
    agentAudioPlaying: true,
    transcript: [],
    muted: false,
    audioBlocked: false,
    connectedAt: Date.now() - 65_000,
    roomName: "test_room",
    start: vi.fn(async () => {}),
    end: vi.fn(async () => {}),
    setMuted: vi.fn(async () => {}),
    enableAudio: vi.fn(async () => {}),
    ...overrides,
  };
}

function renderModal(call: TestCall, onClose = vi.fn()) {
  const view = render(<TestCallModal agentName="Front desk" call={call} onClose={onClose} />);
  return { ...view, onClose, user: userEvent.setup() };
}

describe("TestCallModal", () => {
  it("is a labelled modal dialog showing status, agent state and elapsed time", () => {
    renderModal(callState());

    const dialog = screen.getByRole("dialog", { name: "Test call" });
    expect(dialog).toHaveAttribute("aria-modal", "true");
    expect(within(dialog).getByRole("status")).toHaveTextContent("Connected");
    expect(within(dialog).getByText("Listening")).toBeInTheDocument();
    expect(within(dialog).getByLabelText("Elapsed time")).toHaveTextContent("01:05");
    expect(within(dialog).getByText("Agent audio playing")).toBeInTheDocument();
  });

  it("shows the live transcript with speakers", () => {
    renderModal(
      callState({
        transcript: [
          { id: "1", speaker: "agent", text: "Hello! How can I help?", final: true },
          { id: "2", speaker: "user", text: "Book a table", final: false },
        ],
      }),
    );

    const items = within(screen.getByRole("list", { name: "Live transcript" })).getAllByRole("listitem");
    expect(items).toHaveLength(2);
    expect(items[0]).toHaveTextContent("AgentHello! How can I help?");
    expect(items[1]).toHaveTextContent("YouBook a table");
  });

  it("mutes with a labelled toggle", async () => {
    const call = callState();
    const { user } = renderModal(call);

    const mute = screen.getByRole("button", { name: "Mute microphone" });
    expect(mute).toHaveAttribute("aria-pressed", "false");
    await user.click(mute);

    expect(call.setMuted).toHaveBeenCalledWith(true);
  });

  it("offers unmute when muted", async () => {
    const call = callState({ muted: true });
    const { user } = renderModal(call);

    const unmute = screen.getByRole("button", { name: "Unmute microphone" });
    expect(unmute).toHaveAttribute("aria-pressed", "true");
    expect(screen.getByText("Microphone muted")).toBeInTheDocument();
    await user.click(unmute);

    expect(call.setMuted).toHaveBeenCalledWith(false);
  });

  it("disables mute until connected", () => {
    renderModal(callState({ status: "connecting", connectedAt: null, agentPresent: false, agentState: null }));

    expect(screen.getByRole("button", { name: "Mute microphone" })).toBeDisabled();
    expect(screen.getByRole("status")).toHaveTextContent("Connecting…");
    expect(screen.getByLabelText("Elapsed time")).toHaveTextContent("00:00");
  });

  it("ends the call with End call", async () => {
    const call = callState();
    const { user } = renderModal(call);

    await user.click(screen.getByRole("button", { name: "End call" }));

    expect(call.end).toHaveBeenCalledTimes(1);
  });

  it("asks before Escape ends a live call", async () => {
    const call = callState();
    const { user, onClose } = renderModal(call);

    await user.keyboard("{Escape}");

    expect(call.end).not.toHaveBeenCalled();
    const confirm = screen.getByRole("group", { name: "End the test call?" });
    expect(within(confirm).getByRole("button", { name: "Keep talking" })).toHaveFocus();
    await user.click(within(confirm).getByRole("button", { name: "Yes, end call" }));

    expect(call.end).toHaveBeenCalledTimes(1);
    expect(onClose).not.toHaveBeenCalled();
  });

  it("lets a second Escape cancel the confirmation", async () => {
    const call = callState();
    const { user } = renderModal(call);

    await user.keyboard("{Escape}");
    await user.keyboard("{Escape}");

    expect(screen.queryByRole("group", { name: "End the test call?" })).not.toBeInTheDocument();
    expect(call.end).not.toHaveBeenCalled();
  });

  it("does not ask again on the next call when the agent ended the one it asked about", async () => {
    const { user, rerender } = renderModal(callState());
    await user.keyboard("{Escape}");
    expect(screen.getByRole("group", { name: "End the test call?" })).toBeInTheDocument();

    const modal = (call: TestCall) => <TestCallModal agentName="Front desk" call={call} onClose={vi.fn()} />;
    rerender(modal(callState({ status: "ended", endReason: "The agent ended the call." })));
    rerender(modal(callState({ status: "connecting", connectedAt: null })));

    expect(screen.queryByRole("group", { name: "End the test call?" })).not.toBeInTheDocument();
  });

  it("closes at once on Escape when no call is live", async () => {
    const { user, onClose } = renderModal(callState({ status: "ended", endReason: "You ended the call." }));

    await user.keyboard("{Escape}");

    expect(onClose).toHaveBeenCalledTimes(1);
  });

  it("keeps focus inside the dialog", async () => {
    const { user } = renderModal(callState());
    const dialog = screen.getByRole("dialog");
    const close = screen.getByRole("button", { name: "Close test call" });
    const end = screen.getByRole("button", { name: "End call" });

    expect(close).toHaveFocus();
    end.focus();
    await user.tab();
    expect(close).toHaveFocus();
    await user.tab({ shift: true });
    expect(end).toHaveFocus();
    for (let step = 0; step < 5; step += 1) {
      await user.tab();
      expect(dialog).toContainElement(document.activeElement as HTMLElement);
    }
  });

  it("shows the error and offers to call again", async () => {
    const call = callState({
      status: "error",
      error: "Test calls are unavailable because LiveKit is not configured on the server.",
      connectedAt: null,
    });
    const { user } = renderModal(call);

    expect(screen.getByRole("alert")).toHaveTextContent("LiveKit is not configured on the server");
    expect(screen.getByRole("status")).toHaveTextContent("Call failed");
    await user.click(screen.getByRole("button", { name: "Call again" }));

    expect(call.start).toHaveBeenCalledTimes(1);
  });

  it("offers to enable audio when the browser blocked it", async () => {
    const call = callState({ audioBlocked: true });
    const { user } = renderModal(call);

    await user.click(screen.getByRole("button", { name: "Enable audio" }));

    expect(call.enableAudio).toHaveBeenCalledTimes(1);
  });

  it("formats elapsed time as minutes and seconds", () => {
    expect(formatElapsed(0)).toBe("00:00");
    expect(formatElapsed(59_999)).toBe("00:59");
    expect(formatElapsed(3_725_000)).toBe("62:05");
  });
});
