import { Suspense } from "react";

import { LoginForm } from "@/components/auth/login-form";

import styles from "./login.module.css";

export default function LoginPage() {
  return (
    <main className={styles.page}>
      <div className={styles.panel}>
        <div className={styles.brand}>
          <span className={styles.logo} aria-hidden="true">
            A
          </span>
          <span>Agentline</span>
        </div>
        <h1 className={styles.title}>Sign in to the console</h1>
        <p className={styles.subtitle}>Build, configure and test your voice agents.</p>
        <Suspense>
          <LoginForm />
        </Suspense>
      </div>
    </main>
  );
}
