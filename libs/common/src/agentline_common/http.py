"""What every HTTP service does at its edge: carry the correlation id, time requests, serve /metrics,
read bounded request bodies, and run under uvicorn.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which costs a task per request.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentline_common.logging import CORRELATION_HEADER, bind_correlation_id

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def request_latency_histogram(registry: CollectorRegistry) -> Histogram:
    """The one latency histogram every service exports, labelled by route template (not raw path)."""
    return Histogram(
        "agentline_http_request_duration_seconds",
        "Time to answer an HTTP request, by method, route template and status.",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


class ObservedRequests:
    """Binds the caller's correlation id (or a new one) for logs, echoes it, and times the request."""

    def __init__(self, app: ASGIApp, *, latency: Histogram) -> None:
        self._app = app
        self._latency = latency

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
                message["headers"] = [
                    *message.get("headers", []),
                    (CORRELATION_HEADER.encode(), correlation_id.encode()),
                ]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            route: Any = scope.get("route")
            self._latency.labels(
                method=scope["method"], route=getattr(route, "path", "unmatched"), status=str(status)
            ).observe(time.perf_counter() - started)


def metrics_response(registry: CollectorRegistry) -> Response:
    """The Prometheus text exposition of `registry`."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it passes `limit` bytes.

    Webhooks read their body before they can check its signature, so an unauthenticated caller must
    not be able to make the service hold an arbitrarily large body in memory first.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
    return bytes(body)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode(errors="replace")
    return None


def serve(app: ASGIApp, *, host: str, port: int) -> None:
    """Run `app` under uvicorn the same way in every service.

    uvloop and httptools are the cheapest event loop and HTTP parser per request. There is no access
    log, since ObservedRequests times every request by route. uvicorn's own loggers are left to
    `configure_logging`. What import and start-up built (some 150,000 objects) lives as long as the
    process; frozen, the garbage collector stops walking it on each full collection. Under load those
    walks took about 100 ms each, a pause every request in flight had to wait out.
    """
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, loop="uvloop", http="httptools")
