"use client";

import Link from "next/link";
import { useEffect, useState } from "react";

import { AgentStatusBadge } from "@/components/agents/agent-status-badge";
import { useDashboard } from "@/components/layout/dashboard-context";
import { PageHeader } from "@/components/layout/page-header";
import { Pagination } from "@/components/layout/pagination";
import { listAgents } from "@/services/agent-service";
import { ApiError } from "@/services/api-client";
import type { AgentRead, Page } from "@/services/types";

import styles from "./agents.module.css";

const PAGE_SIZE = 20;

export default function AgentsPage() {
  const { organisation } = useDashboard();
  const [paging, setPaging] = useState<{ orgId: string | null; offset: number }>({ orgId: null, offset: 0 });
  const [page, setPage] = useState<Page<AgentRead> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const orgId = organisation?.org_id ?? null;
  // Switching organisation starts again from the first page.
  const offset = paging.orgId === orgId ? paging.offset : 0;

  useEffect(() => {
    if (!orgId) return;
    let cancelled = false;
    listAgents(orgId, { limit: PAGE_SIZE, offset })
      .then((answer) => {
        if (cancelled) return;
        setPage(answer);
        setError(null);
      })
      .catch((cause: unknown) => {
        if (!cancelled) setError(cause instanceof ApiError ? cause.detail : "Could not load the agents.");
      });
    return () => {
      cancelled = true;
    };
  }, [orgId, offset]);

  if (!organisation) {
    return (
      <>
        <PageHeader title="Agents" />
        <p className="alert">You are not a member of any organisation yet. Ask an owner to invite you.</p>
      </>
    );
  }

  return (
    <>
      <PageHeader
        title="Agents"
        description={`Voice agents of ${organisation.org_name}`}
        actions={
          <Link href="/agents/new" className="btn btn-primary">
            New agent
          </Link>
        }
      />
      {error && (
        <p className="alert alert-error" role="alert">
          {error}
        </p>
      )}
      <section className="card" aria-label="Agents">
        {page === null && !error && <p className={styles.empty}>Loading agents…</p>}
        {page !== null && page.items.length === 0 && (
          <div className={styles.empty}>
            <p>No agents yet.</p>
            <Link href="/agents/new" className="btn btn-primary">
              Create your first agent
            </Link>
          </div>
        )}
        {page !== null && page.items.length > 0 && (
          <>
            <table className="table">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Status</th>
                  <th scope="col">Language</th>
                  <th scope="col">Model</th>
                  <th scope="col">Phone numbers</th>
                  <th scope="col">Updated</th>
                </tr>
              </thead>
              <tbody>
                {page.items.map((agent) => (
                  <tr key={agent.id}>
                    <td>
                      <Link href={`/agents/${agent.id}`} className={styles.name}>
                        {agent.name}
                      </Link>
                    </td>
                    <td>
                      <AgentStatusBadge active={agent.active} />
                    </td>
                    <td>{agent.language}</td>
                    <td className="mono">{agent.llm_model}</td>
                    <td className="mono">{agent.phone_numbers.length > 0 ? agent.phone_numbers.join(", ") : "—"}</td>
                    <td className="muted">{new Date(agent.updated_at).toLocaleString()}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            <Pagination
              total={page.total}
              limit={PAGE_SIZE}
              offset={offset}
              label="Agents pages"
              onChange={(next) => setPaging({ orgId, offset: next })}
            />
          </>
        )}
      </section>
    </>
  );
}
