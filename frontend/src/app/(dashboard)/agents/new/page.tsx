"use client";

import Link from "next/link";
import { useRouter } from "next/navigation";

import { AgentForm } from "@/components/agents/agent-form";
import { useDashboard } from "@/components/layout/dashboard-context";
import { PageHeader } from "@/components/layout/page-header";
import { defaultAgentFormValues } from "@/lib/agent-form";
import { createAgent } from "@/services/agent-service";

export default function NewAgentPage() {
  const router = useRouter();
  const { organisation } = useDashboard();

  if (!organisation) {
    return <p className="alert">You need to be a member of an organisation to create agents.</p>;
  }

  return (
    <>
      <PageHeader
        back={<Link href="/agents">← Agents</Link>}
        title="New agent"
        description={`The agent will belong to ${organisation.org_name}.`}
      />
      <AgentForm
        initialValues={defaultAgentFormValues}
        submitLabel="Create agent"
        onCancel={() => router.push("/agents")}
        onSubmit={async (agent) => {
          const created = await createAgent(organisation.org_id, agent);
          router.push(`/agents/${created.id}`);
        }}
      />
    </>
  );
}
