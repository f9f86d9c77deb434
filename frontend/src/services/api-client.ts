/**
 * The console's one way to reach the API gateway: base URL, bearer token, JSON, and errors that
 * carry the server's own message so the UI can show it.
 */

export type FieldErrors = Record<string, string[]>;

/** An answer other than 2xx, with the server's `detail` message and, for a 422, errors per field. */
export class ApiError extends Error {
  readonly status: number;
  readonly detail: string;
  readonly fieldErrors: FieldErrors;
  readonly retryAfterSeconds: number | null;

  constructor({
    status,
    detail,
    fieldErrors = {},
    retryAfterSeconds = null,
  }: {
    status: number;
    detail: string;
    fieldErrors?: FieldErrors;
    retryAfterSeconds?: number | null;
  }) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.fieldErrors = fieldErrors;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export interface ApiClientOptions {
  /** Origin of the API gateway; "" means the origin the console is served from. */
  baseUrl: string;
  getAccessToken: () => string | null;
  /** Called on any 401, after which the error is still thrown to the caller. */
  onUnauthorized?: () => void;
  fetchImpl?: typeof fetch;
}

export interface RequestOptions {
  method?: "GET" | "POST" | "PATCH" | "PUT" | "DELETE";
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  /** Send no Authorization header (the log-in call). */
  anonymous?: boolean;
}

export interface ApiClient {
  request<T>(path: string, options?: RequestOptions): Promise<T>;
}

interface ValidationIssue {
  loc?: (string | number)[];
  msg?: string;
}

/**
 * FastAPI's 422 body is a list of issues located by path; the form shows each under the top-level
 * field it belongs to, keeping the nested path (tools[0].url) in the text.
 */
export function fieldErrorsFromValidation(issues: ValidationIssue[]): FieldErrors {
  const errors: FieldErrors = {};
  for (const issue of issues) {
    const loc = (issue.loc ?? []).filter((part) => part !== "body");
    const field = loc.length > 0 ? String(loc[0]) : "_form";
    const nested = loc
      .slice(1)
      .map((part) => (typeof part === "number" ? `[${part}]` : `.${part}`))
      .join("");
    const message = nested ? `${field}${nested}: ${issue.msg ?? "invalid"}` : (issue.msg ?? "invalid");
    (errors[field] ??= []).push(message);
  }
  return errors;
}

function summariseFieldErrors(errors: FieldErrors): string {
  const messages = Object.entries(errors).map(([field, list]) =>
    field === "_form" ? list.join("; ") : `${field}: ${list.join("; ")}`,
  );
  return messages.join(" | ") || "The request was not valid.";
}

async function errorFromResponse(response: Response): Promise<ApiError> {
  const retryAfter = response.headers.get("Retry-After");
  const retryAfterSeconds = retryAfter !== null && /^\d+$/.test(retryAfter) ? Number(retryAfter) : null;
  let payload: unknown = null;
  const text = await response.text();
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  const detail = (payload as { detail?: unknown } | null)?.detail;
  if (Array.isArray(detail)) {
    const fieldErrors = fieldErrorsFromValidation(detail as ValidationIssue[]);
    return new ApiError({
      status: response.status,
      detail: summariseFieldErrors(fieldErrors),
      fieldErrors,
      retryAfterSeconds,
    });
  }
  const message =
    typeof detail === "string" && detail
      ? detail
      : `${response.status} ${response.statusText || "error"}`.trim();
  return new ApiError({ status: response.status, detail: message, retryAfterSeconds });
}

export function createApiClient(options: ApiClientOptions): ApiClient {
  const fetchImpl = options.fetchImpl ?? ((input, init) => fetch(input, init));
  const base = options.baseUrl.replace(/\/+$/, "");

  async function request<T>(path: string, { method = "GET", body, query, anonymous = false }: RequestOptions = {}) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) params.set(key, String(value));
    }
    const url = `${base}/api/v1${path}${params.size > 0 ? `?${params}` : ""}`;
    const headers: Record<string, string> = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = anonymous ? null : options.getAccessToken();
    if (token) headers.Authorization = `Bearer ${token}`;

    let response: Response;
    try {
      response = await fetchImpl(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (cause) {
      throw new ApiError({
        status: 0,
        detail: `Cannot reach the server (${cause instanceof Error ? cause.message : String(cause)}).`,
      });
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (response.status === 401 && !anonymous) options.onUnauthorized?.();
      throw error;
    }
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }

  return { request };
}
