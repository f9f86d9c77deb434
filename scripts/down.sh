#!/usr/bin/env bash
# `make down`: asks the `make up` supervisor to stop everything it started, and waits for it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PID_FILE=.local/run/supervisor.pid
if [[ ! -f "${PID_FILE}" ]]; then
    echo "down: nothing running (no ${PID_FILE})"
    exit 0
fi
pid="$(cat "${PID_FILE}")"
if ! kill -TERM "${pid}" 2>/dev/null; then
    echo "down: supervisor ${pid} already gone"
    rm -f "${PID_FILE}"
    exit 0
fi
for _ in $(seq 1 120); do
    kill -0 "${pid}" 2>/dev/null || { echo "down: stopped"; exit 0; }
    sleep 0.5
done
echo "down: supervisor ${pid} still running after 60 s" >&2
exit 1
