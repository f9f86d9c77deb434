import { defineConfig } from "vitest/config";

/** The browser end-to-end run (scripts/e2e-browser.sh): real Chromium against a running stack. */
export default defineConfig({
  test: {
    environment: "node",
    include: ["e2e/**/*.e2e.ts"],
    testTimeout: 180_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
