"""Prometheus metrics of one registry app, on their own registry so apps in one process don't clash."""

from __future__ import annotations

from agentline_common.http import request_latency_histogram
from prometheus_client import CollectorRegistry, Counter, Gauge


class RegistryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = request_latency_histogram(self.registry)
        self.lookups = Counter(
            "agentline_registry_lookups_total",
            "Agent look-ups answered over the bus, by method and result.",
            ["method", "result"],
            registry=self.registry,
        )
        self.outbox_published = Gauge(
            "agentline_registry_outbox_published",
            "Outbox events published by this process since start.",
            registry=self.registry,
        )
        self.outbox_publish_failures = Gauge(
            "agentline_registry_outbox_publish_failures",
            "Outbox publish attempts that failed in this process since start.",
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "agentline_registry_outbox_pending",
            "Outbox events waiting to be published.",
            registry=self.registry,
        )
        self.sessions_active = Gauge(
            "agentline_registry_sessions_active",
            "Sessions in the call log whose status is active.",
            registry=self.registry,
        )
        self.session_sweep_failures = Counter(
            "agentline_registry_session_sweep_failures_total",
            "Passes of the session-expiry sweep that failed (database down or failing); the sweep goes on.",
            registry=self.registry,
        )
        self.sessions_expired = Counter(
            "agentline_registry_sessions_expired_total",
            "Requested sessions that never started and were marked expired.",
            registry=self.registry,
        )
