#!/usr/bin/env bash
# Installs everything Agentline needs on a Debian machine (run as root): Debian packages, uv, the
# Python workspace from uv.lock, the pinned LiveKit server (built with Go into a versioned place
# outside the clone, so every clone on the machine reuses it), LiveKit's SIP bridge, the tools of
# `make k8s-validate` (scripts/k8s-tools.sh), and the console's npm packages. Idempotent: when
# nothing is missing it only checks, in a few seconds.
#
# Go and Node.js are not Debian packages here: bookworm's golang-go (1.19) and nodejs (18) are too
# old. They must be on PATH already; this script checks their versions first and stops at once,
# saying what to install, when one is missing or too old.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"

OPT="${AGENTLINE_OPT:-/opt/agentline}"
LIVEKIT_VERSION="v1.13.5"
LIVEKIT_DIR="${OPT}/livekit-server-${LIVEKIT_VERSION}"
LIVEKIT_BINARY="${LIVEKIT_DIR}/server"
# The `go` line of livekit-server v1.13.5's go.mod; scripts/promql-check/go.mod may ask for more.
LIVEKIT_GO_VERSION="1.26"

APT_PACKAGES=(
    python3 python3-pip
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

# version_at_least HAVE WANT: true when version HAVE >= WANT (dotted numbers).
version_at_least() {
    printf '%s\n%s\n' "$2" "$1" | sort -V -C
}

check_toolchains() {
    local go_wanted node_wanted have engines promql_go
    go_wanted="${LIVEKIT_GO_VERSION}"
    promql_go="$(sed -n 's/^go \([0-9.]*\)$/\1/p' scripts/promql-check/go.mod)"
    if [[ -n "${promql_go}" ]] && ! version_at_least "${go_wanted}" "${promql_go}"; then
        go_wanted="${promql_go}"
    fi
    command -v go >/dev/null 2>&1 ||
        fail "Go >= ${go_wanted} is needed (to build LiveKit ${LIVEKIT_VERSION} and the k8s-validate tools) and no go is on PATH: install it from https://go.dev/dl/ (Debian's golang-go is too old)"
    have="$(go env GOVERSION)"
    have="${have#go}"
    version_at_least "${have%%[-+ ]*}" "${go_wanted}" ||
        fail "Go >= ${go_wanted} is needed (to build LiveKit ${LIVEKIT_VERSION} and the k8s-validate tools), found ${have} at $(command -v go): install a newer one from https://go.dev/dl/ (Debian's golang-go is too old)"
    say "Go ${have} (>= ${go_wanted})"

    engines="$(sed -n 's/^ *"node": *"\(.*\)",\{0,1\}$/\1/p' frontend/package.json)"
    [[ "${engines}" =~ ^\>=\ *([0-9][0-9.]*)$ ]] ||
        fail "frontend/package.json's engines.node is '${engines}'; this script understands only '>=X.Y.Z'"
    node_wanted="${BASH_REMATCH[1]}"
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
        fail "Node.js >= ${node_wanted} with npm is needed (the console; frontend/package.json engines) and node or npm is not on PATH: install it from https://nodejs.org/ (Debian's nodejs is too old)"
    have="$(node --version)"
    have="${have#v}"
    version_at_least "${have}" "${node_wanted}" ||
        fail "Node.js >= ${node_wanted} is needed (frontend/package.json engines), found ${have} at $(command -v node): install a newer one from https://nodejs.org/ (Debian's nodejs is too old)"
    say "Node.js ${have} (>= ${node_wanted})"
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
    python3 -m pip --version >/dev/null 2>&1 ||
        fail "uv: installing it needs pip for python3 (Debian package python3-pip), and python3 -m pip does not run"
    say "uv: installing from PyPI"
    python3 -m pip install --quiet uv || python3 -m pip install --quiet --break-system-packages uv
    command -v uv >/dev/null 2>&1 || fail "uv installed but not on PATH (add ~/.local/bin to PATH)"
}

install_python_packages() {
    say "Python: uv sync --all-packages --frozen"
    # A Python from the machine (Debian's python3), never one downloaded from GitHub.
    UV_PYTHON_DOWNLOADS=never uv sync --all-packages --frozen --quiet
}

install_livekit_server() {
    if [[ -x "${LIVEKIT_BINARY}" ]]; then
        say "LiveKit server ${LIVEKIT_VERSION}: present at ${LIVEKIT_BINARY}"
        return
    fi
    say "LiveKit server ${LIVEKIT_VERSION}: building into ${LIVEKIT_DIR} (takes a few minutes)"
    mkdir -p "${LIVEKIT_DIR}"
    GOBIN="${LIVEKIT_DIR}" CGO_ENABLED=0 \
        go install "github.com/livekit/livekit-server/cmd/server@${LIVEKIT_VERSION}" ||
        fail "LiveKit server: go install github.com/livekit/livekit-server/cmd/server@${LIVEKIT_VERSION} failed"
    [[ -x "${LIVEKIT_BINARY}" ]] || fail "LiveKit server: build finished but ${LIVEKIT_BINARY} is missing"
}

install_livekit_sip() {
    # The SIP bridge is only needed by the real-SIP-call tests; a failed build is reported, and the
    # tests that need it say what is missing. A failed attempt is tried again the next day, not on
    # every run (scripts/build-livekit-sip.sh --daily).
    scripts/build-livekit-sip.sh --daily || say "WARNING: LiveKit SIP bridge not built (see above)"
}

install_k8s_tools() {
    # shellcheck source=scripts/k8s-tools.sh
    source scripts/k8s-tools.sh
    k8s_tools_install
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

check_toolchains
install_debian_packages
install_uv
install_python_packages
install_livekit_server
install_livekit_sip
install_k8s_tools
install_npm_packages
say "done"
