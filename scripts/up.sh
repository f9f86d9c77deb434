#!/usr/bin/env bash
# `make up`: the whole platform on this machine, on loopback, in the foreground.
# The supervisor (scripts/run_local.py) starts RabbitMQ, Redis, LiveKit, the services, the gateway
# and the console, prints the console URL and the demo login, and stops it all on Ctrl-C or
# `make down`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec uv run --frozen python scripts/run_local.py "$@"
