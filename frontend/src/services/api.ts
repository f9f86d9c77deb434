import { createApiClient } from "@/services/api-client";
import { authStore } from "@/services/auth-store";

/** The client every page uses: the gateway's origin from the build, the signed-in user's token. */
export const api = createApiClient({
  baseUrl: process.env.NEXT_PUBLIC_API_BASE_URL ?? "",
  getAccessToken: () => authStore.getToken(),
  onUnauthorized: () => authStore.clear("expired"),
});
