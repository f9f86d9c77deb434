#!/usr/bin/env bash
# The console's checks: install the locked npm packages when they are missing or the lock changed,
# then type-check, lint and run the unit tests once.
set -euo pipefail

cd "$(dirname "$0")/../frontend"
export NEXT_TELEMETRY_DISABLED=1

# The same stamp scripts/setup.sh writes, so the two never install twice for one lock file.
stamp=node_modules/.agentline-lock.sha256
wanted="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -d node_modules || ! -f "${stamp}" || "$(cat "${stamp}")" != "${wanted}" ]]; then
    echo "test-frontend: npm ci"
    npm ci --no-audit --no-fund --loglevel=error
    echo "${wanted}" >"${stamp}"
fi

echo "test-frontend: tsc --noEmit"
npx --no-install tsc --noEmit
echo "test-frontend: eslint"
npx --no-install eslint .
echo "test-frontend: vitest run"
npm test --silent
