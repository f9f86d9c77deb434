"use client";

/**
 * Who is signed in and which organisation the console is looking at. Pages under (dashboard) only
 * render once the user is known; a missing or expired session sends the browser to /login.
 */

import { usePathname, useRouter } from "next/navigation";
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";

import { ApiError } from "@/services/api-client";
import { authStore } from "@/services/auth-store";
import { getCurrentUser, logout } from "@/services/auth-service";
import type { CurrentUser, Membership } from "@/services/types";

const ORG_STORAGE_KEY = "agentline.org";

interface DashboardValue {
  user: CurrentUser;
  organisation: Membership | null;
  selectOrganisation(orgId: string): void;
  signOut(): void;
}

const DashboardContext = createContext<DashboardValue | null>(null);

export function useDashboard(): DashboardValue {
  const value = useContext(DashboardContext);
  if (!value) throw new Error("useDashboard is only available inside the dashboard layout");
  return value;
}

function loginPath(next: string, expired: boolean): string {
  const params = new URLSearchParams({ next });
  if (expired) params.set("expired", "1");
  return `/login?${params}`;
}

export function DashboardProvider({ children, fallback }: { children: ReactNode; fallback: ReactNode }) {
  const router = useRouter();
  const pathname = usePathname();
  const [user, setUser] = useState<CurrentUser | null>(null);
  const [orgId, setOrgId] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    return authStore.subscribe((session, reason) => {
      if (!session) router.replace(reason === "expired" ? loginPath(pathname, true) : "/login");
    });
  }, [pathname, router]);

  useEffect(() => {
    if (!authStore.getSession()) {
      router.replace(loginPath(pathname, false));
      return;
    }
    let cancelled = false;
    getCurrentUser()
      .then((me) => {
        if (cancelled) return;
        setUser(me);
        const stored = window.sessionStorage.getItem(ORG_STORAGE_KEY);
        const known = me.memberships.find((membership) => membership.org_id === stored);
        setOrgId(known?.org_id ?? me.memberships[0]?.org_id ?? null);
      })
      .catch((cause: unknown) => {
        if (cancelled || (cause instanceof ApiError && cause.status === 401)) return;
        setError(cause instanceof ApiError ? cause.detail : "Could not load your account.");
      });
    return () => {
      cancelled = true;
    };
    // The user is loaded once per visit to the dashboard, not on every navigation inside it.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const selectOrganisation = useCallback((next: string) => {
    window.sessionStorage.setItem(ORG_STORAGE_KEY, next);
    setOrgId(next);
  }, []);

  const signOut = useCallback(() => {
    logout();
  }, []);

  const value = useMemo<DashboardValue | null>(() => {
    if (!user) return null;
    const organisation = user.memberships.find((membership) => membership.org_id === orgId) ?? null;
    return { user, organisation, selectOrganisation, signOut };
  }, [orgId, selectOrganisation, signOut, user]);

  if (error) {
    return (
      <div className="alert alert-error" role="alert" style={{ margin: "2rem" }}>
        {error}
      </div>
    );
  }
  if (!value) return <>{fallback}</>;
  return <DashboardContext.Provider value={value}>{children}</DashboardContext.Provider>;
}
