#!/usr/bin/env bash
# Installs everything Agentline needs on a Debian machine (run as root): Debian packages, uv, the
# Python workspace from uv.lock, the pinned LiveKit server (built with Go into a versioned place
# outside the clone, so every clone on the machine reuses it), LiveKit's SIP bridge, and the
# console's npm packages. Idempotent: when nothing is missing it only checks, in a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"

OPT="${AGENTLINE_OPT:-/opt/agentline}"
LIVEKIT_VERSION="v1.13.5"
LIVEKIT_DIR="${OPT}/livekit-server-${LIVEKIT_VERSION}"
LIVEKIT_BINARY="${LIVEKIT_DIR}/server"

APT_PACKAGES=(
    rabbitmq-server redis-server postgresql nginx
    espeak-ng sox iproute2 chromium sip-tester
    pkg-config libopus-dev libopusfile-dev libsoxr-dev
    ca-certificates curl git make
)

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: FAILED: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_debian_packages() {
    local missing=()
    local pkg status
    for pkg in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)"
        [[ "${status}" == "install ok installed" ]] || missing+=("${pkg}")
    done
    if ((${#missing[@]} == 0)); then
        say "Debian packages: all present"
        return
    fi
    say "Debian packages: installing ${missing[*]}"
    # Servers are started by the test fixtures and `make up`, never as system services: keep the
    # package scripts from starting them (policy-rc.d exit 101 = "not allowed").
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "${policy}" >/dev/null
        as_root chmod +x "${policy}"
        created_policy=1
    fi
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if ((created_policy)); then as_root rm -f "${policy}"; fi
}

install_uv() {
    if command -v uv >/dev/null 2>&1; then
        say "uv: $(uv --version)"
        return
    fi
    say "uv: installing from PyPI"
    python3 -m pip install --quiet uv || python3 -m pip install --quiet --break-system-packages uv
    command -v uv >/dev/null 2>&1 || fail "uv installed but not on PATH (add ~/.local/bin to PATH)"
}

install_python_packages() {
    say "Python: uv sync --all-packages --frozen"
    uv sync --all-packages --frozen --quiet
}

install_livekit_server() {
    if [[ -x "${LIVEKIT_BINARY}" ]]; then
        say "LiveKit server ${LIVEKIT_VERSION}: present at ${LIVEKIT_BINARY}"
        return
    fi
    command -v go >/dev/null 2>&1 || fail "LiveKit server: Go is needed to build it (go not on PATH)"
    say "LiveKit server ${LIVEKIT_VERSION}: building into ${LIVEKIT_DIR} (takes a few minutes)"
    mkdir -p "${LIVEKIT_DIR}"
    GOBIN="${LIVEKIT_DIR}" CGO_ENABLED=0 \
        go install "github.com/livekit/livekit-server/cmd/server@${LIVEKIT_VERSION}" ||
        fail "LiveKit server: go install github.com/livekit/livekit-server/cmd/server@${LIVEKIT_VERSION} failed"
    [[ -x "${LIVEKIT_BINARY}" ]] || fail "LiveKit server: build finished but ${LIVEKIT_BINARY} is missing"
}

install_livekit_sip() {
    [[ -x scripts/build-livekit-sip.sh ]] || return 0
    # The SIP bridge is only needed by the real-SIP-call tests; a failed build is reported, and the
    # tests that need it say what is missing.
    scripts/build-livekit-sip.sh || say "WARNING: LiveKit SIP bridge not built (see above)"
}

install_npm_packages() {
    [[ -f frontend/package-lock.json ]] || return 0
    local stamp=frontend/node_modules/.agentline-lock.sha256
    local wanted
    wanted="$(sha256sum frontend/package-lock.json | cut -d' ' -f1)"
    if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" ]]; then
        say "npm: frontend/node_modules matches package-lock.json"
        return
    fi
    say "npm: npm ci in frontend/"
    (cd frontend && npm ci --no-audit --no-fund --loglevel=error)
    echo "${wanted}" >"${stamp}"
}

install_debian_packages
install_uv
install_python_packages
install_livekit_server
install_livekit_sip
install_npm_packages
say "done"
