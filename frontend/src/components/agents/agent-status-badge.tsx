export function AgentStatusBadge({ active }: { active: boolean }) {
  return <span className={`badge ${active ? "badge-success" : ""}`}>{active ? "Active" : "Inactive"}</span>;
}
