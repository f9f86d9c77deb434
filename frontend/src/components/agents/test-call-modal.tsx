"use client";

/**
 * The live test call: status, the agent's state, the transcript and the call controls, in a modal
 * dialog that keeps keyboard focus inside it and asks before Escape hangs up.
 */

import { useCallback, useEffect, useRef, useState } from "react";

import type { AgentState } from "@/lib/call-room";
import { LIVE_STATUSES, type CallStatus, type TestCall } from "@/hooks/use-test-call";

import styles from "./test-call-modal.module.css";

const STATUS_LABELS: Record<CallStatus, string> = {
  idle: "Ready",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  ended: "Call ended",
  error: "Call failed",
};

const STATUS_BADGES: Record<CallStatus, string> = {
  idle: "",
  connecting: "badge-warning",
  connected: "badge-success",
  reconnecting: "badge-warning",
  ended: "",
  error: "badge-danger",
};

const AGENT_STATE_LABELS: Record<AgentState, string> = {
  initializing: "Starting up",
  idle: "Idle",
  listening: "Listening",
  thinking: "Thinking",
  speaking: "Speaking",
};

const FOCUSABLE =
  'button:not([disabled]), [href], input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

export function formatElapsed(milliseconds: number): string {
  const seconds = Math.max(0, Math.floor(milliseconds / 1000));
  const minutes = Math.floor(seconds / 60);
  return `${String(minutes).padStart(2, "0")}:${String(seconds % 60).padStart(2, "0")}`;
}

function useElapsed(connectedAt: number | null, running: boolean): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!running) return;
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [running]);
  return connectedAt === null ? 0 : now - connectedAt;
}

export function TestCallModal({ agentName, call, onClose }: { agentName: string; call: TestCall; onClose(): void }) {
  const dialogRef = useRef<HTMLDivElement>(null);
  const transcriptRef = useRef<HTMLOListElement>(null);
  const keepTalkingRef = useRef<HTMLButtonElement>(null);
  const [confirmRequested, setConfirming] = useState(false);
  const live = LIVE_STATUSES.has(call.status);
  // A call that ends by itself needs no confirmation any more, nor does the next one: the request is
  // dropped when the call stops being live (adjusted while rendering, as React advises for state
  // that follows a prop).
  const [wasLive, setWasLive] = useState(live);
  if (live !== wasLive) {
    setWasLive(live);
    if (!live) setConfirming(false);
  }
  const confirming = confirmRequested && live;
  const elapsed = useElapsed(call.connectedAt, call.status === "connected" || call.status === "reconnecting");

  const requestClose = useCallback(() => {
    if (live) setConfirming(true);
    else onClose();
  }, [live, onClose]);

  const confirmEnd = useCallback(() => {
    setConfirming(false);
    void call.end();
  }, [call]);

  useEffect(() => {
    if (confirming) keepTalkingRef.current?.focus();
  }, [confirming]);

  // Focus moves into the dialog on open and back to where it was on close.
  useEffect(() => {
    const previous = document.activeElement as HTMLElement | null;
    const first = dialogRef.current?.querySelector<HTMLElement>(FOCUSABLE);
    (first ?? dialogRef.current)?.focus();
    return () => previous?.focus?.();
  }, []);

  useEffect(() => {
    function onKeyDown(event: KeyboardEvent) {
      const dialog = dialogRef.current;
      if (!dialog) return;
      if (event.key === "Escape") {
        event.preventDefault();
        if (confirming) setConfirming(false);
        else requestClose();
        return;
      }
      if (event.key !== "Tab") return;
      const focusable = Array.from(dialog.querySelectorAll<HTMLElement>(FOCUSABLE));
      if (focusable.length === 0) {
        event.preventDefault();
        dialog.focus();
        return;
      }
      const first = focusable[0]!;
      const last = focusable[focusable.length - 1]!;
      const active = document.activeElement;
      if (!dialog.contains(active)) {
        event.preventDefault();
        first.focus();
      } else if (event.shiftKey && (active === first || active === dialog)) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && active === last) {
        event.preventDefault();
        first.focus();
      }
    }
    document.addEventListener("keydown", onKeyDown);
    return () => document.removeEventListener("keydown", onKeyDown);
  }, [confirming, requestClose]);

  useEffect(() => {
    const list = transcriptRef.current;
    if (list) list.scrollTop = list.scrollHeight;
  }, [call.transcript]);

  const agentLine = (() => {
    if (call.status === "connecting") return "Joining the call…";
    if (!live) return "Not in a call";
    if (!call.agentPresent) return "Waiting for the agent to join…";
    return call.agentState ? AGENT_STATE_LABELS[call.agentState] : "Joined";
  })();

  return (
    <div className={styles.backdrop}>
      <div
        ref={dialogRef}
        className={styles.dialog}
        role="dialog"
        aria-modal="true"
        aria-labelledby="test-call-title"
        aria-describedby="test-call-status"
        tabIndex={-1}
        data-call-status={call.status}
        data-agent-state={call.agentState ?? ""}
        data-agent-audio={call.agentAudioPlaying ? "playing" : "silent"}
        data-muted={call.muted ? "true" : "false"}
        data-room-name={call.roomName ?? ""}
      >
        <header className={styles.header}>
          <div>
            <h2 id="test-call-title">Test call</h2>
            <p className={styles.agentName}>{agentName}</p>
          </div>
          <button type="button" className="btn btn-ghost btn-small" aria-label="Close test call" onClick={requestClose}>
            ✕
          </button>
        </header>

        <div className={styles.statusBar}>
          <span id="test-call-status" role="status" aria-live="polite" className={`badge ${STATUS_BADGES[call.status]}`}>
            {STATUS_LABELS[call.status]}
          </span>
          <span className={styles.elapsed}>
            <span className="visually-hidden">Elapsed time </span>
            <time aria-label="Elapsed time" dateTime={`PT${Math.floor(elapsed / 1000)}S`}>
              {formatElapsed(elapsed)}
            </time>
          </span>
        </div>

        <div className={styles.agentPanel}>
          <div
            className={`${styles.orb} ${live && call.agentState ? styles[call.agentState] : ""}`}
            aria-hidden="true"
          />
          <div>
            <div className={styles.agentStateLabel}>Agent</div>
            <div className={styles.agentState} aria-live="polite">
              {agentLine}
            </div>
            <div className={styles.indicators}>
              {call.agentAudioPlaying && <span className="badge badge-primary">Agent audio playing</span>}
              {call.muted && live && <span className="badge badge-warning">Microphone muted</span>}
            </div>
          </div>
        </div>

        {call.status === "error" && call.error && (
          <div className={`alert alert-error ${styles.message}`} role="alert">
            {call.error}
          </div>
        )}
        {call.status === "ended" && call.endReason && (
          <p className={`alert ${styles.message}`}>{call.endReason}</p>
        )}
        {call.audioBlocked && live && (
          <div className={`alert alert-warning ${styles.message}`} role="alert">
            Your browser blocked the agent&apos;s audio.{" "}
            <button type="button" className="btn btn-small" onClick={() => void call.enableAudio()}>
              Enable audio
            </button>
          </div>
        )}

        <section className={styles.transcriptSection} aria-labelledby="transcript-title">
          <h3 id="transcript-title" className={styles.transcriptTitle}>
            Transcript
          </h3>
          <ol ref={transcriptRef} className={styles.transcript} aria-label="Live transcript" aria-live="polite">
            {call.transcript.length === 0 && (
              <li className={styles.transcriptEmpty}>
                {live ? "The conversation will appear here." : "Nothing was said."}
              </li>
            )}
            {call.transcript.map((line) => (
              <li
                key={line.id}
                className={`${styles.line} ${line.speaker === "agent" ? styles.agentLine : styles.userLine} ${
                  line.final ? "" : styles.interim
                }`}
                data-speaker={line.speaker}
              >
                <span className={styles.speaker}>{line.speaker === "agent" ? "Agent" : "You"}</span>
                <span className={styles.text}>{line.text}</span>
              </li>
            ))}
          </ol>
        </section>

        {confirming && (
          <div className={styles.confirm} role="group" aria-labelledby="confirm-end-title">
            <p id="confirm-end-title">End the test call?</p>
            <div className={styles.controls}>
              <button ref={keepTalkingRef} type="button" className="btn" onClick={() => setConfirming(false)}>
                Keep talking
              </button>
              <button type="button" className="btn btn-danger" onClick={confirmEnd}>
                Yes, end call
              </button>
            </div>
          </div>
        )}

        <footer className={styles.controls}>
          {live ? (
            <>
              <button
                type="button"
                className="btn"
                aria-pressed={call.muted}
                aria-label={call.muted ? "Unmute microphone" : "Mute microphone"}
                disabled={call.status !== "connected"}
                onClick={() => void call.setMuted(!call.muted)}
              >
                {call.muted ? "Unmute" : "Mute"}
              </button>
              <button type="button" className="btn btn-danger" onClick={() => void call.end()}>
                End call
              </button>
            </>
          ) : (
            <>
              <button type="button" className="btn" onClick={onClose}>
                Close
              </button>
              <button type="button" className="btn btn-primary" onClick={() => void call.start()}>
                Call again
              </button>
            </>
          )}
        </footer>
      </div>
    </div>
  );
}
