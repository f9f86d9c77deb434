"""Prometheus metrics of the gateway, on a registry of its own per app (tests build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentline_common.http import request_latency_histogram
from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.webhooks_answered = Counter(
            "agentline_telephony_webhooks_answered",
            "Twilio webhooks answered with TwiML, by webhook and outcome.",
            ["webhook", "outcome"],
            registry=self.registry,
        )
        self.webhooks_rejected = Counter(
            "agentline_telephony_webhooks_rejected",
            "Webhooks refused with 403 because their Twilio signature did not verify.",
            ["webhook"],
            registry=self.registry,
        )
        self.request_latency = request_latency_histogram(self.registry)
        self.outbox_pending = Gauge(
            "agentline_telephony_outbox_pending",
            "Events stored but not yet confirmed by the broker.",
            registry=self.registry,
        )
        self.outbox_publish_failures = Gauge(
            "agentline_telephony_outbox_publish_failures",
            "Publish attempts the broker did not confirm since start (they are retried).",
            registry=self.registry,
        )
