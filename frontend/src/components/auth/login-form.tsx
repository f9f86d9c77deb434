"use client";

import { useRouter, useSearchParams } from "next/navigation";
import { useState, type FormEvent } from "react";

import { afterSignInPath } from "@/lib/sign-in-redirect";
import { ApiError } from "@/services/api-client";
import { login } from "@/services/auth-service";

import styles from "./login-form.module.css";

export function LoginForm() {
  const router = useRouter();
  const params = useSearchParams();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [submitting, setSubmitting] = useState(false);
  const expired = params.get("expired") === "1";

  async function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setError(null);
    setSubmitting(true);
    try {
      await login(email.trim(), password);
      router.replace(afterSignInPath(params.get("next"), window.location.origin));
    } catch (cause) {
      if (cause instanceof ApiError && (cause.status === 401 || cause.status === 400)) {
        setError("The email or password is not correct.");
      } else if (cause instanceof ApiError) {
        setError(cause.detail);
      } else {
        setError("Sign-in failed. Try again.");
      }
      setSubmitting(false);
    }
  }

  return (
    <form className={styles.form} onSubmit={submit} noValidate aria-describedby={error ? "login-error" : undefined}>
      {expired && !error && (
        <p className="alert alert-warning" role="status">
          Your session has expired. Sign in again to continue.
        </p>
      )}
      {error && (
        <p id="login-error" className="alert alert-error" role="alert">
          {error}
        </p>
      )}
      <div className="field">
        <label htmlFor="email">Email</label>
        <input
          id="email"
          className="input"
          type="email"
          autoComplete="username"
          required
          value={email}
          onChange={(event) => setEmail(event.target.value)}
        />
      </div>
      <div className="field">
        <label htmlFor="password">Password</label>
        <input
          id="password"
          className="input"
          type="password"
          autoComplete="current-password"
          required
          value={password}
          onChange={(event) => setPassword(event.target.value)}
        />
      </div>
      <button className={`btn btn-primary ${styles.submit}`} type="submit" disabled={submitting || !email || !password}>
        {submitting ? "Signing in…" : "Sign in"}
      </button>
    </form>
  );
}
