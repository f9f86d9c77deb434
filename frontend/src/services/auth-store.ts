/**
 * The user's access token, kept in memory and mirrored to sessionStorage so a reload keeps the
 * session while closing the tab ends it (sessionStorage is per tab, unlike localStorage).
 */

const STORAGE_KEY = "agentline.session";

export interface StoredSession {
  accessToken: string;
  expiresAt: string;
}

export type SessionEndReason = "logout" | "expired";
type Listener = (session: StoredSession | null, reason?: SessionEndReason) => void;

let current: StoredSession | null | undefined;
const listeners = new Set<Listener>();

function storage(): Storage | null {
  return typeof window === "undefined" ? null : window.sessionStorage;
}

function isLive(session: StoredSession): boolean {
  const expires = Date.parse(session.expiresAt);
  return Number.isNaN(expires) || expires > Date.now();
}

function load(): StoredSession | null {
  const raw = storage()?.getItem(STORAGE_KEY);
  if (!raw) return null;
  try {
    const parsed = JSON.parse(raw) as Partial<StoredSession>;
    if (typeof parsed.accessToken === "string" && typeof parsed.expiresAt === "string") {
      return { accessToken: parsed.accessToken, expiresAt: parsed.expiresAt };
    }
  } catch {
    // A corrupt entry is treated as no session.
  }
  return null;
}

function emit(session: StoredSession | null, reason?: SessionEndReason) {
  for (const listener of listeners) listener(session, reason);
}

export const authStore = {
  getSession(): StoredSession | null {
    if (current === undefined) current = load();
    if (current && !isLive(current)) {
      authStore.clear("expired");
    }
    return current ?? null;
  },

  getToken(): string | null {
    return authStore.getSession()?.accessToken ?? null;
  },

  set(session: StoredSession) {
    current = session;
    storage()?.setItem(STORAGE_KEY, JSON.stringify(session));
    emit(session);
  },

  clear(reason: SessionEndReason = "logout") {
    const had = current !== null && current !== undefined;
    current = null;
    storage()?.removeItem(STORAGE_KEY);
    if (had) emit(null, reason);
  },

  subscribe(listener: Listener): () => void {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};
