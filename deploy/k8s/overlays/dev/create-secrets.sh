#!/usr/bin/env bash
# Creates every Secret the dev overlay needs, with random values, in namespace agentline-dev.
# Idempotent: an existing Secret is left alone (delete it to get new values). Nothing is written to
# disk. LiveKit's key and secret must be those of your LiveKit server: pass them in the environment
# (LIVEKIT_API_KEY, LIVEKIT_API_SECRET), else random ones are made for a LiveKit you configure to match.
# OPENAI_API_KEY and TWILIO_AUTH_TOKEN come from the environment too (empty when unset).
set -euo pipefail

NAMESPACE=${NAMESPACE:-agentline-dev}
random() { openssl rand -hex 32; }

exists() { kubectl -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1; }

create() {  # create NAME --from-literal=... / --from-file=...
    local name=$1
    shift
    if exists "$name"; then
        echo "secret/$name exists, kept"
        return
    fi
    kubectl -n "$NAMESPACE" create secret generic "$name" "$@"
}

kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE"

rabbitmq_password=$(random)
redis_password=$(random)
postgres_password=$(random)

if ! exists agentline-rabbitmq; then
    create agentline-rabbitmq \
        --from-literal=RABBITMQ_DEFAULT_USER=agentline \
        --from-literal=RABBITMQ_DEFAULT_PASS="$rabbitmq_password" \
        --from-literal=RABBITMQ_ERLANG_COOKIE="$(random)"
    kubectl -n "$NAMESPACE" delete secret agentline-bus --ignore-not-found
    create agentline-bus --from-literal=AMQP_URL="amqp://agentline:$rabbitmq_password@rabbitmq:5672/"
fi

if ! exists agentline-redis; then
    create agentline-redis \
        --from-literal=REDIS_PASSWORD="$redis_password" \
        --from-literal=REDIS_URL="redis://:$redis_password@redis:6379/0"
fi

if ! exists agentline-postgres; then
    create agentline-postgres \
        --from-literal=POSTGRES_USER=agentline \
        --from-literal=POSTGRES_PASSWORD="$postgres_password"
    kubectl -n "$NAMESPACE" delete secret agentline-registry agentline-telephony --ignore-not-found
    key_dir=$(mktemp -d)
    trap 'rm -rf "$key_dir"' EXIT
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key_dir/jwt-private-key.pem" 2>/dev/null
    create agentline-registry \
        --from-literal=DATABASE_URL="postgresql+asyncpg://agentline:$postgres_password@postgres:5432/agentline" \
        --from-file=jwt-private-key.pem="$key_dir/jwt-private-key.pem"
    create agentline-telephony \
        --from-literal=TELEPHONY_DATABASE_URL="postgresql+asyncpg://agentline:$postgres_password@postgres:5432/agentline_telephony" \
        --from-literal=TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-}" \
        --from-literal=SIP_USERNAME="${SIP_USERNAME:-twilio}" \
        --from-literal=SIP_PASSWORD="${SIP_PASSWORD:-$(random)}"
fi

# Keys a release added to a Secret made by an older version of this script.
add_missing() {  # add_missing SECRET KEY VALUE
    if [ -z "$(kubectl -n "$NAMESPACE" get secret "$1" -o "jsonpath={.data.$2}")" ]; then
        kubectl -n "$NAMESPACE" patch secret "$1" -p "{\"stringData\":{\"$2\":\"$3\"}}"
    fi
}
add_missing agentline-telephony SIP_USERNAME "${SIP_USERNAME:-twilio}"
add_missing agentline-telephony SIP_PASSWORD "${SIP_PASSWORD:-$(random)}"

create agentline-livekit \
    --from-literal=LIVEKIT_API_KEY="${LIVEKIT_API_KEY:-agentline-dev}" \
    --from-literal=LIVEKIT_API_SECRET="${LIVEKIT_API_SECRET:-$(random)}"

create agentline-worker --from-literal=OPENAI_API_KEY="${OPENAI_API_KEY:-}"
