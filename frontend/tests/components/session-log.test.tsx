/** The session log reads itself again while a call on the page has not ended. */

import { act, render, screen } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { SessionLog, UNSETTLED_POLL_MS } from "@/components/agents/session-log";
import type { Page, SessionRead, SessionStatus } from "@/services/types";

function page(status: SessionStatus): Page<SessionRead> {
  const session: SessionRead = {
    id: "s1",
    org_id: "o1",
    agent_id: "a1",
    kind: "test",
    room_name: "test_a1_abc",
    status,
    requested_at: "2026-11-25T10:00:00Z",
    started_at: "2026-11-25T10:00:01Z",
    ended_at: status === "ended" ? "2026-11-25T10:01:00Z" : null,
    from_number: null,
    to_number: null,
    end_reason: status === "ended" ? "user_hangup" : null,
    end_detail: null,
    duration_seconds: status === "ended" ? 59 : null,
    transcript: [],
    turns: [],
  };
  return { items: [session], total: 1, limit: 10, offset: 0 };
}

describe("SessionLog", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("shows a call's end that reaches the registry after the log was read", async () => {
    const load = vi.fn().mockResolvedValueOnce(page("active")).mockResolvedValue(page("ended"));
    render(<SessionLog agentId="a1" refreshKey={0} load={load} />);
    await act(async () => {});
    expect(screen.getByText("active")).toBeInTheDocument();

    await act(async () => {
      await vi.advanceTimersByTimeAsync(UNSETTLED_POLL_MS);
    });

    expect(screen.getByText("ended")).toBeInTheDocument();
    expect(screen.getByText("user_hangup")).toBeInTheDocument();
  });

  it("keeps reading after a read that failed", async () => {
    const load = vi
      .fn()
      .mockResolvedValueOnce(page("active"))
      .mockRejectedValueOnce(new Error("network down"))
      .mockResolvedValue(page("ended"));
    render(<SessionLog agentId="a1" refreshKey={0} load={load} />);
    await act(async () => {});

    await act(async () => {
      await vi.advanceTimersByTimeAsync(UNSETTLED_POLL_MS);
    });
    expect(screen.getByRole("alert")).toHaveTextContent("Could not load the session log.");
    await act(async () => {
      await vi.advanceTimersByTimeAsync(UNSETTLED_POLL_MS);
    });

    expect(screen.getByText("ended")).toBeInTheDocument();
  });

  it("stops reading once every call on the page has ended", async () => {
    const load = vi.fn().mockResolvedValue(page("ended"));
    render(<SessionLog agentId="a1" refreshKey={0} load={load} />);
    await act(async () => {});

    await act(async () => {
      await vi.advanceTimersByTimeAsync(UNSETTLED_POLL_MS * 3);
    });

    expect(load).toHaveBeenCalledTimes(1);
  });
});
