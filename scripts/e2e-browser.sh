#!/usr/bin/env bash
# The Test Agent call in headless Chromium (Debian's /usr/bin/chromium via playwright-core) against
# a running stack reached through the API gateway. Nothing here starts the stack.
#
# Required:
#   E2E_BASE_URL   the gateway, e.g. http://127.0.0.1:8080 (console and /api/v1 on one origin)
#   E2E_EMAIL, E2E_PASSWORD   a user of the agent's organisation
#   E2E_AGENT_ID   an active agent with a first message
# Optional:
#   E2E_AUDIO_WAV  what the fake microphone plays, on a loop (default: a question made with espeak-ng
#                  and sox when installed, else a generated tone; either way after 12 s of silence,
#                  so the caller does not talk over, and so interrupt, the agent's greeting)
#   E2E_ARTIFACTS_DIR  screenshots (default: test-artifacts/e2e-browser at the repository root)
#   E2E_CHROMIUM   the browser (default /usr/bin/chromium)
# Chromium must reach LiveKit's media addresses: when LiveKit runs inside a network namespace, run
# this script inside the same namespace (ip netns exec <ns> scripts/e2e-browser.sh).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
missing=()
for name in E2E_BASE_URL E2E_EMAIL E2E_PASSWORD E2E_AGENT_ID; do
    [[ -n "${!name:-}" ]] || missing+=("${name}")
done
if ((${#missing[@]} > 0)); then
    echo "e2e-browser: not set: ${missing[*]} (a running stack and its demo login are needed)" >&2
    exit 2
fi
chromium="${E2E_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "${chromium}" ]]; then
    echo "e2e-browser: no Chromium at ${chromium} (apt-get install chromium)" >&2
    exit 2
fi

export E2E_ARTIFACTS_DIR="${E2E_ARTIFACTS_DIR:-${root}/test-artifacts/e2e-browser}"
mkdir -p "${E2E_ARTIFACTS_DIR}"
if [[ -z "${E2E_AUDIO_WAV:-}" ]] && command -v espeak-ng >/dev/null && command -v sox >/dev/null; then
    export E2E_AUDIO_WAV="${E2E_ARTIFACTS_DIR}/fake-microphone.wav"
    espeak-ng -s 150 -w "${E2E_ARTIFACTS_DIR}/question.wav" "What are your opening hours on Saturday?"
    sox "${E2E_ARTIFACTS_DIR}/question.wav" -r 48000 -c 1 -b 16 "${E2E_AUDIO_WAV}" pad 12 30
fi

"${root}/scripts/test-frontend.sh" install
cd "${root}/frontend"
echo "e2e-browser: ${E2E_BASE_URL}, agent ${E2E_AGENT_ID}, screenshots in ${E2E_ARTIFACTS_DIR}"
NEXT_TELEMETRY_DISABLED=1 npx --no-install vitest run --config vitest.e2e.config.ts
