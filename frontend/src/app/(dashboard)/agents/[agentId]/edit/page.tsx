"use client";

import Link from "next/link";
import { useParams, useRouter } from "next/navigation";
import { useEffect, useState } from "react";

import { AgentForm } from "@/components/agents/agent-form";
import { PageHeader } from "@/components/layout/page-header";
import { formValuesFromAgent } from "@/lib/agent-form";
import { getAgent, updateAgent } from "@/services/agent-service";
import { ApiError } from "@/services/api-client";
import type { AgentRead } from "@/services/types";

export default function EditAgentPage() {
  const router = useRouter();
  const { agentId } = useParams<{ agentId: string }>();
  const [agent, setAgent] = useState<AgentRead | null>(null);
  const [error, setError] = useState<string | null>(null);

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

  return (
    <>
      <PageHeader
        back={<Link href={`/agents/${agentId}`}>← {agent?.name ?? "Agent"}</Link>}
        title={agent ? `Edit ${agent.name}` : "Edit agent"}
      />
      {error && (
        <p className="alert alert-error" role="alert">
          {error}
        </p>
      )}
      {!agent && !error && <p className="muted">Loading…</p>}
      {agent && (
        <AgentForm
          initialValues={formValuesFromAgent(agent)}
          submitLabel="Save changes"
          onCancel={() => router.push(`/agents/${agentId}`)}
          onSubmit={async (changes) => {
            await updateAgent(agentId, changes);
            router.push(`/agents/${agentId}`);
          }}
        />
      )}
    </>
  );
}
