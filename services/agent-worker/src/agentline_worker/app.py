"""The worker process: livekit-agents' AgentServer registered under our agent name, a health server,
and a drain on SIGTERM (calls in progress finish, no new jobs are taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from agentline_common.bus import Bus, BusUnavailable
from aiohttp import web
from livekit.agents import AgentServer, JobExecutorType

from agentline_worker.api import health_app
from agentline_worker.job import accept_job, entrypoint, prewarm
from agentline_worker.settings import WorkerSettings

log = structlog.get_logger()

BROKER_RETRY_SECONDS = 2.0


class SessionLoad:
    """The worker's load for LiveKit: the share of `max_sessions` in use."""

    def __init__(self, max_sessions: int) -> None:
        self._max_sessions = max_sessions

    def __call__(self, server: AgentServer) -> float:
        return min(1.0, len(server.active_jobs) / self._max_sessions)


def create_server(settings: WorkerSettings) -> AgentServer:
    """The AgentServer: explicit dispatch under `settings.agent_name`."""
    assert settings.livekit_api_key is not None and settings.livekit_api_secret is not None
    server = AgentServer(
        job_executor_type=JobExecutorType(settings.job_executor),
        load_threshold=settings.load_threshold,
        drain_timeout=settings.drain_timeout_seconds,
        num_idle_processes=settings.num_idle_processes,
        job_memory_limit_mb=settings.job_memory_limit_mb,
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key.get_secret_value(),
        api_secret=settings.livekit_api_secret.get_secret_value(),
        host=settings.health_host,
        port=0,
        setup_fnc=prewarm,
        load_fnc=SessionLoad(settings.max_sessions),
        initialize_process_timeout=settings.process_start_timeout_seconds,
    )
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_request=accept_job)
    return server


class Worker:
    """The running worker, as the health probes see it."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self.server = create_server(settings)
        self._registered = False
        self._bus = Bus(settings.amqp_url.get_secret_value(), exchange=settings.bus_exchange)
        self.server.on("worker_registered", self._on_registered)

    def _on_registered(self, worker_id: str, *_: object) -> None:
        self._registered = True
        log.info("worker.registered", worker_id=worker_id, agent_name=self._settings.agent_name)

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def draining(self) -> bool:
        return self.server.draining

    @property
    def broker_connected(self) -> bool:
        return self._bus.is_connected

    @property
    def active_sessions(self) -> int:
        if self.server._closed:
            return 0
        return len(self.server.active_jobs)

    async def _connect_broker(self) -> None:
        """Keep trying: the broker only gates readiness here, jobs open their own connections."""
        while True:
            try:
                await self._bus.connect()
                return
            except BusUnavailable:
                log.warning("worker.broker_unavailable")
                await asyncio.sleep(BROKER_RETRY_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain and shut down."""
        health = web.AppRunner(health_app(self), access_log=None)
        await health.setup()
        await web.TCPSite(health, self._settings.health_host, self._settings.health_port).start()
        broker = asyncio.create_task(self._connect_broker())
        serving = asyncio.create_task(self.server.run(devmode=False))
        stopping = asyncio.create_task(stop.wait())
        log.info("worker.starting", agent_name=self._settings.agent_name)
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if serving.done():
                serving.result()
            else:
                await self._drain()
        finally:
            stopping.cancel()
            broker.cancel()
            await self.server.aclose()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serving
            await self._bus.close()
            await health.cleanup()
            log.info("worker.stopped")

    async def _drain(self) -> None:
        log.info("worker.draining", active_sessions=self.active_sessions)
        try:
            await self.server.drain(timeout=self._settings.drain_timeout_seconds)
        except TimeoutError:
            log.warning("worker.drain_timed_out", active_sessions=self.active_sessions)
        log.info("worker.drained")


async def serve(settings: WorkerSettings) -> None:
    """Run the worker until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Worker(settings).run(stop)
