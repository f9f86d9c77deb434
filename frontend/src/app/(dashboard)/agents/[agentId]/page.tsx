"use client";

import Link from "next/link";
import { useParams } from "next/navigation";
import { useCallback, useEffect, useState } from "react";

import { AgentConfig } from "@/components/agents/agent-config";
import { AgentStatusBadge } from "@/components/agents/agent-status-badge";
import { SessionLog } from "@/components/agents/session-log";
import { TestAgentButton } from "@/components/agents/test-agent-button";
import { TestCallModal } from "@/components/agents/test-call-modal";
import { PageHeader } from "@/components/layout/page-header";
import { useTestCall } from "@/hooks/use-test-call";
import { getAgent, setAgentActive } from "@/services/agent-service";
import { ApiError } from "@/services/api-client";
import type { AgentRead } from "@/services/types";

import styles from "./agent-detail.module.css";

export default function AgentDetailPage() {
  const { agentId } = useParams<{ agentId: string }>();
  const [agent, setAgent] = useState<AgentRead | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [toggling, setToggling] = useState(false);
  const [callOpen, setCallOpen] = useState(false);
  const [sessionsVersion, setSessionsVersion] = useState(0);
  const call = useTestCall(agentId);

  useEffect(() => {
    let cancelled = false;
    getAgent(agentId)
      .then((found) => {
        if (!cancelled) setAgent(found);
      })
      .catch((cause: unknown) => {
        if (!cancelled) setError(cause instanceof ApiError ? cause.detail : "Could not load the agent.");
      });
    return () => {
      cancelled = true;
    };
  }, [agentId]);

  const startTestCall = () => {
    setCallOpen(true);
    // start() runs inside this click so the browser lets the call play audio.
    void call.start();
  };

  const closeTestCall = useCallback(() => {
    setCallOpen(false);
    void call.end();
    setSessionsVersion((version) => version + 1);
  }, [call]);

  async function toggleActive() {
    if (!agent) return;
    setToggling(true);
    setActionError(null);
    try {
      setAgent(await setAgentActive(agent.id, !agent.active));
    } catch (cause) {
      setActionError(cause instanceof ApiError ? cause.detail : "The change was not saved.");
    } finally {
      setToggling(false);
    }
  }

  if (error) {
    return (
      <>
        <PageHeader back={<Link href="/agents">← Agents</Link>} title="Agent" />
        <p className="alert alert-error" role="alert">
          {error}
        </p>
      </>
    );
  }
  if (!agent) return <p className="muted">Loading agent…</p>;

  return (
    <>
      <PageHeader
        back={<Link href="/agents">← Agents</Link>}
        title={
          <span className={styles.title}>
            {agent.name} <AgentStatusBadge active={agent.active} />
          </span>
        }
        description={<span className="mono">{agent.id}</span>}
        actions={
          <>
            <Link href={`/agents/${agent.id}/edit`} className="btn">
              Edit
            </Link>
            <button type="button" className="btn" onClick={toggleActive} disabled={toggling}>
              {agent.active ? "Deactivate" : "Activate"}
            </button>
            <TestAgentButton active={agent.active} onStart={startTestCall} />
          </>
        }
      />
      {actionError && (
        <p className="alert alert-error" role="alert">
          {actionError}
        </p>
      )}
      <div className={styles.sections}>
        <AgentConfig agent={agent} />
        <SessionLog agentId={agent.id} refreshKey={sessionsVersion} />
      </div>
      {callOpen && <TestCallModal agentName={agent.name} call={call} onClose={closeTestCall} />}
    </>
  );
}
