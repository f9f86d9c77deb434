#!/usr/bin/env bash
# Build LiveKit's SIP bridge (livekit-sip), pinned, into a versioned place outside the clone.
# Idempotent: does nothing when the binary is already there. Needs Go, a C toolchain, pkg-config and
# Debian's libopus-dev, libopusfile-dev and libsoxr-dev (CGO). Exits non-zero, saying which step
# failed, when the build cannot be done here; callers that can live without SIP treat that as a warning.
set -euo pipefail

VERSION="${LIVEKIT_SIP_VERSION:-v1.11.0}"
PREFIX="${AGENTLINE_OPT:-/opt/agentline}"
BIN_DIR="${PREFIX}/livekit-sip-${VERSION}"
BINARY="${BIN_DIR}/livekit-sip"

if [[ -x "${BINARY}" ]]; then
    echo "livekit-sip ${VERSION}: present at ${BINARY}"
    exit 0
fi

for lib in opus opusfile soxr; do
    if ! pkg-config --exists "${lib}"; then
        echo "livekit-sip ${VERSION}: pkg-config finds no ${lib} (install libopus-dev libopusfile-dev libsoxr-dev)" >&2
        exit 1
    fi
done

mkdir -p "${BIN_DIR}"
echo "livekit-sip ${VERSION}: building into ${BIN_DIR} (takes several minutes)"
if ! CGO_ENABLED=1 GOBIN="${BIN_DIR}" go install "github.com/livekit/sip/cmd/livekit-sip@${VERSION}"; then
    echo "livekit-sip ${VERSION}: 'go install github.com/livekit/sip/cmd/livekit-sip@${VERSION}' failed (see above)" >&2
    exit 1
fi
echo "livekit-sip ${VERSION}: built ${BINARY}"
