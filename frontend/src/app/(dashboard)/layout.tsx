"use client";

import type { ReactNode } from "react";

import { AppShell } from "@/components/layout/app-shell";
import { DashboardProvider } from "@/components/layout/dashboard-context";

export default function DashboardLayout({ children }: { children: ReactNode }) {
  return (
    <DashboardProvider fallback={<p className="muted" style={{ padding: "2rem" }}>Loading…</p>}>
      <AppShell>{children}</AppShell>
    </DashboardProvider>
  );
}
