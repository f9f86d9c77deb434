#!/usr/bin/env bash
# Build LiveKit's SIP bridge (livekit-sip), pinned, into a versioned place outside the clone.
# Idempotent: does nothing when the binary is already there. Needs Go, a C toolchain, pkg-config and
# Debian's libopus-dev, libopusfile-dev and libsoxr-dev (CGO). Exits non-zero, saying which step
# failed, when the build cannot be done here; callers that can live without SIP treat that as a warning.
#
#   --daily   (scripts/setup.sh) after a failed attempt, try again only the next day: a failure is
#             remembered in /opt/agentline/livekit-sip-<version>.failed, which holds its date.
#             Without --daily, or with that file deleted, the build is tried now.
set -euo pipefail

VERSION="${LIVEKIT_SIP_VERSION:-v1.11.0}"
PREFIX="${AGENTLINE_OPT:-/opt/agentline}"
BIN_DIR="${PREFIX}/livekit-sip-${VERSION}"
BINARY="${BIN_DIR}/livekit-sip"
FAILED="${PREFIX}/livekit-sip-${VERSION}.failed"
TODAY="$(date +%F)"

daily=0
case "${1:-}" in
--daily) daily=1 ;;
"") ;;
*)
    echo "usage: $0 [--daily]" >&2
    exit 2
    ;;
esac

if [[ -x "${BINARY}" ]]; then
    echo "livekit-sip ${VERSION}: present at ${BINARY}"
    rm -f "${FAILED}"
    exit 0
fi

if ((daily)) && [[ -f "${FAILED}" && "$(cat "${FAILED}")" == "${TODAY}" ]]; then
    echo "livekit-sip ${VERSION}: not built; today's attempt (${TODAY}) failed, the next is tomorrow" \
        "(delete ${FAILED}, or run $0 without --daily, to try now)" >&2
    exit 1
fi

# Remembers this attempt's failure, whatever step it failed at.
remember_failure() {
    local status=$?
    if ((status != 0)); then
        { mkdir -p "${PREFIX}" && echo "${TODAY}" >"${FAILED}"; } || true
    fi
}
trap remember_failure EXIT

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
rm -f "${FAILED}"
echo "livekit-sip ${VERSION}: built ${BINARY}"
