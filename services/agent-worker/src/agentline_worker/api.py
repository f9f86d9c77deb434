"""The worker's HTTP face: liveness, readiness and Prometheus metrics on the health port (8104)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web


class WorkerView(Protocol):
    """What the probes read off the running worker."""

    @property
    def registered(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def broker_connected(self) -> bool: ...

    @property
    def active_sessions(self) -> int: ...


@dataclass
class Probes:
    worker: WorkerView

    async def healthz(self, _: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Readiness: registered with LiveKit, the broker reachable, and not draining."""
        checks = {
            "livekit": self.worker.registered,
            "broker": self.worker.broker_connected,
            "accepting_jobs": not self.worker.draining,
        }
        status = 200 if all(checks.values()) else 503
        return web.json_response({"ready": status == 200, "checks": checks}, status=status)

    async def metrics(self, _: web.Request) -> web.Response:
        """Prometheus text format: sessions in progress and whether the worker is draining."""
        lines = [
            "# HELP agentline_worker_sessions_active Calls in progress on this worker.",
            "# TYPE agentline_worker_sessions_active gauge",
            f"agentline_worker_sessions_active {self.worker.active_sessions}",
            "# HELP agentline_worker_draining 1 while the worker finishes calls before exiting.",
            "# TYPE agentline_worker_draining gauge",
            f"agentline_worker_draining {int(self.worker.draining)}",
            "# HELP agentline_worker_registered 1 while registered with LiveKit.",
            "# TYPE agentline_worker_registered gauge",
            f"agentline_worker_registered {int(self.worker.registered)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def health_app(worker: WorkerView) -> web.Application:
    probes = Probes(worker)
    app = web.Application()
    app.router.add_get("/healthz", probes.healthz)
    app.router.add_get("/readyz", probes.readyz)
    app.router.add_get("/metrics", probes.metrics)
    return app
