"use client";

import Link from "next/link";
import type { ReactNode } from "react";

import { useDashboard } from "@/components/layout/dashboard-context";

import styles from "./app-shell.module.css";

export function AppShell({ children }: { children: ReactNode }) {
  const { user, organisation, selectOrganisation, signOut } = useDashboard();

  return (
    <div className={styles.shell}>
      <header className={styles.header}>
        <div className={styles.headerInner}>
          <Link href="/agents" className={styles.brand}>
            <span className={styles.logo} aria-hidden="true">
              A
            </span>
            Agentline
          </Link>
          <nav aria-label="Main" className={styles.nav}>
            <Link href="/agents" className={styles.navLink}>
              Agents
            </Link>
          </nav>
          <div className={styles.account}>
            {user.memberships.length > 1 && (
              <label className={styles.orgPicker}>
                <span className="visually-hidden">Organisation</span>
                <select
                  className="select"
                  value={organisation?.org_id ?? ""}
                  onChange={(event) => selectOrganisation(event.target.value)}
                >
                  {user.memberships.map((membership) => (
                    <option key={membership.org_id} value={membership.org_id}>
                      {membership.org_name}
                    </option>
                  ))}
                </select>
              </label>
            )}
            {user.memberships.length === 1 && organisation && (
              <span className={styles.orgName}>{organisation.org_name}</span>
            )}
            <span className={styles.user} title={user.email}>
              {user.name || user.email}
            </span>
            <button type="button" className="btn btn-small" onClick={signOut}>
              Sign out
            </button>
          </div>
        </div>
      </header>
      <main className={styles.main}>{children}</main>
    </div>
  );
}
