"""Prometheus instruments of the token-service, one registry per app so test apps do not collide."""

from __future__ import annotations

import time
from typing import Any

from agentline_common.logging import CORRELATION_HEADER, bind_correlation_id
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
        self.request_latency = Histogram(
            "agentline_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )


class RequestMetricsMiddleware:
    """Times every request by its route template and binds the caller's correlation id for logs.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs a task per request.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        correlation_id = bind_correlation_id(_header(scope, CORRELATION_HEADER))
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (CORRELATION_HEADER.encode(), correlation_id.encode()),
                ]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            route: Any = scope.get("route")
            self._metrics.request_latency.labels(
                method=scope["method"],
                route=getattr(route, "path", "unmatched"),
                status=str(status),
            ).observe(time.perf_counter() - started)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode(errors="replace")
    return None
