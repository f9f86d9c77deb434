#!/usr/bin/env bash
# The console's checks. With no argument: install the locked npm packages when they are missing or
# the lock changed, then type-check, lint and run the unit tests once.
#   scripts/test-frontend.sh install   only the install step
#   scripts/test-frontend.sh e2e       the browser end-to-end run (scripts/e2e-browser.sh)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}/frontend"
export NEXT_TELEMETRY_DISABLED=1

install() {
    # The same stamp scripts/setup.sh writes, so the two never install twice for one lock file.
    local stamp=node_modules/.agentline-lock.sha256 wanted
    wanted="$(sha256sum package-lock.json | cut -d' ' -f1)"
    if [[ ! -d node_modules || ! -f "${stamp}" || "$(cat "${stamp}")" != "${wanted}" ]]; then
        echo "test-frontend: npm ci"
        npm ci --no-audit --no-fund --loglevel=error
        echo "${wanted}" >"${stamp}"
    fi
}

case "${1:-unit}" in
install)
    install
    ;;
e2e)
    exec "${root}/scripts/e2e-browser.sh"
    ;;
unit)
    install
    echo "test-frontend: tsc --noEmit"
    npx --no-install tsc --noEmit
    echo "test-frontend: eslint"
    npx --no-install eslint .
    echo "test-frontend: vitest run"
    npm test --silent
    ;;
*)
    echo "usage: $0 [unit|install|e2e]" >&2
    exit 2
    ;;
esac
