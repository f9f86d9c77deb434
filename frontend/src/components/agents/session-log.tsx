"use client";

import { Fragment, useEffect, useState } from "react";

import { Pagination } from "@/components/layout/pagination";
import { listSessions } from "@/services/agent-service";
import { ApiError } from "@/services/api-client";
import type { Page, SessionRead, SessionStatus } from "@/services/types";

import styles from "./session-log.module.css";

const PAGE_SIZE = 10;
/** How often the log is read again while a call on the page has not ended: its end arrives from the
 * worker over the bus a moment after the caller hangs up, and a phone call may be in progress. */
export const UNSETTLED_POLL_MS = 3000;
const UNSETTLED: ReadonlySet<SessionStatus> = new Set(["requested", "active"]);

const STATUS_BADGES: Record<SessionStatus, string> = {
  requested: "badge-warning",
  active: "badge-success",
  ended: "",
  failed: "badge-danger",
  expired: "",
};

function formatDuration(seconds: number | null): string {
  if (seconds === null) return "—";
  const whole = Math.round(seconds);
  return whole < 60 ? `${whole}s` : `${Math.floor(whole / 60)}m ${whole % 60}s`;
}

function formatTime(value: string | null): string {
  return value ? new Date(value).toLocaleString() : "—";
}

function latencySummary(session: SessionRead): string | null {
  const latencies = session.turns.map((turn) => turn.latency_ms).filter((value): value is number => value !== null);
  if (latencies.length === 0) return null;
  const mean = latencies.reduce((sum, value) => sum + value, 0) / latencies.length;
  return `${latencies.length} turn${latencies.length === 1 ? "" : "s"}, mean response ${Math.round(mean)} ms`;
}

export function SessionLog({
  agentId,
  refreshKey,
  load = listSessions,
}: {
  agentId: string;
  refreshKey: number;
  load?: typeof listSessions;
}) {
  const [offset, setOffset] = useState(0);
  const [page, setPage] = useState<Page<SessionRead> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [open, setOpen] = useState<Set<string>>(() => new Set());
  const [polls, setPolls] = useState(0);
  const unsettled = page?.items.some((session) => UNSETTLED.has(session.status)) ?? false;

  // Re-armed by each poll, not by each answer, so a read that failed is simply tried again.
  useEffect(() => {
    if (!unsettled) return;
    const timer = window.setTimeout(() => setPolls((count) => count + 1), UNSETTLED_POLL_MS);
    return () => window.clearTimeout(timer);
  }, [unsettled, polls]);

  useEffect(() => {
    let cancelled = false;
    load(agentId, { limit: PAGE_SIZE, offset })
      .then((answer) => {
        if (cancelled) return;
        setPage(answer);
        setError(null);
      })
      .catch((cause: unknown) => {
        if (!cancelled) setError(cause instanceof ApiError ? cause.detail : "Could not load the session log.");
      });
    return () => {
      cancelled = true;
    };
  }, [agentId, offset, refreshKey, polls, load]);

  const toggle = (id: string) =>
    setOpen((previous) => {
      const next = new Set(previous);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });

  return (
    <section className="card" aria-labelledby="session-log-title">
      <div className="card-header">
        <h2 id="session-log-title">Session log</h2>
        {page && <span className="muted">{page.total} total</span>}
      </div>
      {error && (
        <p className={`alert alert-error ${styles.message}`} role="alert">
          {error}
        </p>
      )}
      {!page && !error && <p className={styles.empty}>Loading sessions…</p>}
      {page && page.items.length === 0 && (
        <p className={styles.empty}>No calls yet. Start a test call to see it here.</p>
      )}
      {page && page.items.length > 0 && (
        <>
          <table className="table">
            <thead>
              <tr>
                <th scope="col">Type</th>
                <th scope="col">Status</th>
                <th scope="col">Started</th>
                <th scope="col">Duration</th>
                <th scope="col">Caller</th>
                <th scope="col">Ended because</th>
                <th scope="col">
                  <span className="visually-hidden">Transcript</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {page.items.map((session) => {
                const expanded = open.has(session.id);
                const latency = latencySummary(session);
                return (
                  <Fragment key={session.id}>
                    <tr>
                      <td>
                        <span className={`badge ${session.kind === "test" ? "badge-primary" : ""}`}>
                          {session.kind === "test" ? "Test call" : "Phone call"}
                        </span>
                      </td>
                      <td>
                        <span className={`badge ${STATUS_BADGES[session.status]}`}>{session.status}</span>
                      </td>
                      <td>{formatTime(session.started_at ?? session.requested_at)}</td>
                      <td>{formatDuration(session.duration_seconds)}</td>
                      <td className="mono">
                        {session.kind === "phone" ? `${session.from_number ?? "unknown"} → ${session.to_number ?? ""}` : "Browser"}
                      </td>
                      <td title={session.end_detail ?? undefined}>{session.end_reason ?? "—"}</td>
                      <td>
                        <button
                          type="button"
                          className="btn btn-small"
                          aria-expanded={expanded}
                          aria-controls={`transcript-${session.id}`}
                          onClick={() => toggle(session.id)}
                        >
                          Transcript ({session.transcript.length})
                        </button>
                      </td>
                    </tr>
                    {expanded && (
                      <tr id={`transcript-${session.id}`} className={styles.transcriptRow}>
                        <td colSpan={7}>
                          {latency && <p className={styles.latency}>{latency}</p>}
                          {session.transcript.length === 0 ? (
                            <p className="muted">No transcript was recorded for this call.</p>
                          ) : (
                            <ol className={styles.transcript} aria-label="Call transcript">
                              {session.transcript.map((entry, index) => (
                                <li key={`${entry.at}-${index}`}>
                                  <span className={styles.speaker}>{entry.role === "agent" ? "Agent" : "Caller"}</span>
                                  <span>{entry.text}</span>
                                </li>
                              ))}
                            </ol>
                          )}
                        </td>
                      </tr>
                    )}
                  </Fragment>
                );
              })}
            </tbody>
          </table>
          <Pagination total={page.total} limit={PAGE_SIZE} offset={offset} label="Session pages" onChange={setOffset} />
        </>
      )}
    </section>
  );
}
