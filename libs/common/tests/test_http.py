"""The shared HTTP edge, served by a real ASGI server on loopback."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from agentline_common.http import ObservedRequests, metrics_response, read_body, request_latency_histogram
from agentline_common.logging import current_correlation_id
from agentline_common.testing.servers import free_port
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

pytestmark = pytest.mark.integration

BODY_LIMIT = 1024


@pytest.fixture
async def served() -> AsyncIterator[str]:
    registry = CollectorRegistry()

    async def item(request: Request) -> Response:
        return JSONResponse({"correlation_id": current_correlation_id()})

    async def metrics(request: Request) -> Response:
        return metrics_response(registry)

    async def upload(request: Request) -> Response:
        return JSONResponse({"size": len(await read_body(request, limit=BODY_LIMIT))})

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/metrics", metrics),
            Route("/upload", upload, methods=["POST"]),
        ]
    )
    asgi = ObservedRequests(app, latency=request_latency_histogram(registry))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_correlation_id_is_carried_and_echoed(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        given = await http.get("/items/1", headers={"X-Correlation-ID": "abc-123"})
        made = await http.get("/items/2")
    assert given.json()["correlation_id"] == "abc-123"
    assert given.headers["x-correlation-id"] == "abc-123"
    assert made.headers["x-correlation-id"] == made.json()["correlation_id"]
    assert len(made.headers["x-correlation-id"]) == 32


async def test_latency_is_recorded_by_route_template(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        await http.get("/items/1")
        await http.get("/items/2")
        await http.get("/nowhere")
        text = (await http.get("/metrics")).text
    assert 'route="/items/{item_id}",status="200"} 2.0' in text
    assert 'route="unmatched",status="404"} 1.0' in text
    assert "/items/1" not in text


async def test_a_body_is_read_up_to_its_limit_and_refused_past_it_even_without_a_length(served: str) -> None:
    async def chunks(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 256):
            yield b"x" * 256

    async with httpx.AsyncClient(base_url=served) as http:
        exact = await http.post("/upload", content=b"x" * BODY_LIMIT)
        declared = await http.post("/upload", content=b"x" * (BODY_LIMIT + 1))
        streamed = await http.post("/upload", content=chunks(64 * BODY_LIMIT))
    assert exact.json() == {"size": BODY_LIMIT}
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "larger than 1024 bytes" in streamed.text
