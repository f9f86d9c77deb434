#!/usr/bin/env bash
# The Test Agent call end to end, on the whole stack that `make up` runs: RabbitMQ, Redis, LiveKit,
# the four services, the nginx gateway and the console, with the offline fake model server as the
# only stand-in. Headless Chromium logs in through the gateway, calls the demo agent, hears its
# greeting, mutes and hangs up (frontend/e2e, via scripts/e2e-browser.sh); then the registry's
# session log must show that call as ended, with the greeting in its transcript.
#
# WebRTC media needs an interface other than loopback, and the network rule allows no address but
# loopback and those of a namespace the test makes itself. So everything runs inside a fresh network
# namespace (agentline-e2e-<random>) holding loopback and a veth pair whose both ends stay inside, one
# with a private address (10.213.<random>.1/24) that LiveKit advertises as its node IP (a veth, not a
# dummy interface, as in agentline_common.testing.netns: this kernel has no dummy driver). Nothing
# inside has a route out.
# The namespace, every process in it and the run's state are removed at the end, also on failure.
#
# The stack is scripts/run_local.py, as in `make up`, console included: the production build that
# scripts/build-console.sh makes while the rest starts (reused while the console's sources stay the
# same, so a developer's `make up` and this run share it), served by its standalone server.
#
# Needs root (ip netns) and `make setup`. Bounded: the whole run stops within RUN_LIMIT seconds.
# Logs and screenshots: test-artifacts/e2e-stack/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"

RUN_LIMIT=290
STACK_LIMIT=180
TEARDOWN_LIMIT=25
started=${SECONDS}

artifacts="${root}/test-artifacts/e2e-stack"
rm -rf "${artifacts}"
mkdir -p "${artifacts}"
stack_log="${artifacts}/stack.log"
browser_log="${artifacts}/browser.log"

run_id="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
namespace="agentline-e2e-${run_id}"
address="10.213.$(($(od -An -N1 -tu1 /dev/urandom) % 254 + 1)).1"
state="$(mktemp -d /tmp/agentline-e2e-XXXXXX)"
supervisor=""

say() { echo "e2e-stack: $*"; }

remaining() { echo $((RUN_LIMIT - TEARDOWN_LIMIT - (SECONDS - started))); }

teardown() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "${supervisor}" ]] && kill -0 "${supervisor}" 2>/dev/null; then
        # The supervisor stops its programs in reverse order; whatever is left is killed below.
        kill -TERM "${supervisor}" 2>/dev/null || true
        timeout "${TEARDOWN_LIMIT}" tail --pid="${supervisor}" -f /dev/null || true
    fi
    if ip netns pids "${namespace}" >/dev/null 2>&1; then
        ip netns pids "${namespace}" | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "${namespace}" 2>/dev/null || true
    fi
    rm -rf "${state}"
    if ((status != 0)); then
        say "FAILED after $((SECONDS - started)) s. Logs: ${stack_log} (every program, the"
        say "  console's build too), ${browser_log} (Chromium run); screenshots in ${artifacts}/screenshots"
    fi
    exit "${status}"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_namespace() { ip netns exec "${namespace}" "$@"; }

say "namespace ${namespace}, LiveKit node IP ${address}"
ip netns add "${namespace}"
ip -n "${namespace}" link set lo up
ip -n "${namespace}" link add agl0 type veth peer name agl1
ip -n "${namespace}" addr add "${address}/24" dev agl0
ip -n "${namespace}" link set agl0 up
ip -n "${namespace}" link set agl1 up

scripts/test-frontend.sh install

# The fake model server, whatever keys the caller's environment holds.
say "starting the stack and building the console, unless built already (log: ${stack_log})"
in_namespace env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u DEMO_PASSWORD \
    uv run --frozen --no-sync python scripts/run_local.py \
    --state-dir "${state}" --livekit-node-ip "${address}" --ready-file "${state}/ready.json" \
    >"${stack_log}" 2>&1 &
supervisor=$!

while [[ ! -f "${state}/ready.json" ]]; do
    if ! kill -0 "${supervisor}" 2>/dev/null; then
        say "the stack stopped before it was ready:"
        tail -n 30 "${stack_log}"
        exit 1
    fi
    if ((SECONDS - started >= STACK_LIMIT)); then
        say "the stack was not ready after ${STACK_LIMIT} s:"
        tail -n 30 "${stack_log}"
        exit 1
    fi
    sleep 1
done
say "stack ready after $((SECONDS - started)) s"

if ! in_namespace curl -sf -o /dev/null --max-time 5 http://127.0.0.1:8080/login; then
    say "the console does not answer through the gateway:"
    tail -n 30 "${stack_log}"
    exit 1
fi

login="$(cat "${state}/ready.json")"
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "${login}" "$1"; }
export E2E_BASE_URL="http://127.0.0.1:8080"
E2E_EMAIL="$(field email)"
E2E_PASSWORD="$(field password)"
E2E_AGENT_ID="$(field agent_id)"
export E2E_EMAIL E2E_PASSWORD E2E_AGENT_ID
export E2E_ARTIFACTS_DIR="${artifacts}/screenshots"

say "Chromium: the Test Agent call through ${E2E_BASE_URL} (log: ${browser_log})"
if ! in_namespace timeout --kill-after=5 "$(remaining)" scripts/e2e-browser.sh 2>&1 | tee "${browser_log}"; then
    say "the browser run failed"
    exit 1
fi

say "the registry's session log, through the gateway"
in_namespace timeout 30 uv run --frozen --no-sync python - "${E2E_BASE_URL}" <<'PY' | tee "${artifacts}/sessions.txt"
"""The call the browser made is in the session log: a test call, ended, with the greeting spoken."""

import json
import os
import re
import sys
import urllib.request

base = sys.argv[1]


def call(path: str, *, token: str | None = None, body: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def words(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


token = call("/auth/login", body={"email": os.environ["E2E_EMAIL"], "password": os.environ["E2E_PASSWORD"]})[
    "access_token"
]
agent_id = os.environ["E2E_AGENT_ID"]
agent = call(f"/agents/{agent_id}", token=token)
sessions = call(f"/agents/{agent_id}/sessions?limit=50&offset=0", token=token)["items"]
print(json.dumps(sessions, indent=2))
# The registry is new for this run: the browser's call is the only session it can hold.
assert len(sessions) == 1, f"expected the one test call, found {len(sessions)} sessions"
session = sessions[0]
assert session["kind"] == "test", f"kind {session['kind']}"
assert session["status"] == "ended", f"status {session['status']}"
assert session["room_name"].startswith(f"test_{agent_id}_"), f"room {session['room_name']}"
said = [words(entry["text"]) for entry in session["transcript"] if entry["role"] == "agent"]
assert any(words(agent["first_message"]) in text for text in said), f"no greeting in {session['transcript']}"
print(f"session {session['id']}: test call, ended ({session['end_reason']}), {len(session['transcript'])} transcript entries")
PY

# The point of the namespace: the browser's media went over its address, not loopback. LiveKit logs
# each participant's ICE candidates, the pair in use marked "selected".
media="$(grep 'participant active' "${stack_log}" | grep '"participant": "user-' |
    grep -o "\[local\]\[selected:1\]\[[a-z]*\] [a-z0-9]* host ${address}:[0-9]*" || true)"
if [[ -z "${media}" ]]; then
    say "LiveKit did not log the browser's media on ${address} (grep 'participant active' ${stack_log})"
    exit 1
fi
say "the browser's media went over ${media#*] }"

say "passed in $((SECONDS - started)) s; screenshots in ${E2E_ARTIFACTS_DIR}"
