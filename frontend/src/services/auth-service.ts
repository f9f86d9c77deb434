/** Signing in and finding out who is signed in. */

import { api } from "@/services/api";
import type { ApiClient } from "@/services/api-client";
import { authStore } from "@/services/auth-store";
import type { CurrentUser, LoginResponse } from "@/services/types";

export async function login(email: string, password: string, client: ApiClient = api): Promise<void> {
  const answer = await client.request<LoginResponse>("/auth/login", {
    method: "POST",
    body: { email, password },
    anonymous: true,
  });
  authStore.set({ accessToken: answer.access_token, expiresAt: answer.expires_at });
}

export function getCurrentUser(client: ApiClient = api): Promise<CurrentUser> {
  return client.request("/auth/me");
}

export function logout(): void {
  authStore.clear("logout");
}
