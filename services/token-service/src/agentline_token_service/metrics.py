"""Prometheus instruments of the token-service, one registry per app so test apps do not collide."""

from __future__ import annotations

from agentline_common.http import request_latency_histogram
from prometheus_client import CollectorRegistry, Counter


class Metrics:
    """Tokens issued and refused, webhooks received, and request latency by route."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tokens_issued = Counter(
            "agentline_tokens_issued_total",
            "Test-call tokens handed out (each with a confirmed session.requested).",
            registry=self.registry,
        )
        self.token_refusals = Counter(
            "agentline_test_token_refusals_total",
            "Test-token requests refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "agentline_livekit_webhooks_total",
            "LiveKit webhooks received with a valid signature, by event.",
            ["event"],
            registry=self.registry,
        )
        self.request_latency = request_latency_histogram(self.registry)
