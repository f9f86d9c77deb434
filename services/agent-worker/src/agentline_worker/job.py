"""The LiveKit side of a call: accept a dispatch, plan it, look the agent up, run the session, and
report `session.started` / `session.ended` on the bus however it ends.

Runs in livekit-agents' job processes (one per call). Each job opens its own bus, Redis, HTTP and
model clients: they are bound to the job's event loop, and a call's lifetime is what they need to
live. While the agent joins the room, the clients open and the agent is looked up by the room's
name, so the session can start as soon as the join is done. A broker that is down when the call
starts does not stop it: the bus keeps trying to connect, and the call's events follow once it is
back. What is safe to share between calls (Silero's ONNX session, the TLS context) is loaded once
per process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from agentline_common.agents import AgentConfig
from agentline_common.bus import Bus, BusUnavailable, PublishError
from agentline_common.events import EndReason, Event
from agentline_common.logging import bind_correlation_id, configure_logging
from agentline_common.registry_client import AgentNotFound, RegistryClient, RegistryUnavailable
from agentline_common.rooms import InvalidRoomName, PhoneRoom, parse_room_name
from livekit import rtc
from livekit.agents import AutoSubscribe, JobContext, JobProcess, JobRequest, room_io, vad
from livekit.plugins import silero
from openai import AsyncClient
from redis.asyncio import Redis

from agentline_worker.pipeline import CallRecord, build_session, model_client, warm_up
from agentline_worker.service import (
    PlanError,
    SessionPlan,
    accepts_room,
    correlation_id_for,
    dispatch_timeline,
    ended_event,
    plan_session,
    refusal,
    session_id_for,
    started_event,
)
from agentline_worker.settings import WorkerSettings
from agentline_worker.tools import tool_http_session

log = structlog.get_logger()

VAD_KEY = "vad"
SETTINGS_KEY = "settings"
FINISH_MARGIN_SECONDS = 10.0
"""How much longer than the publish's own bound a job's end waits for `session.ended`."""
BUS_RETRY_SECONDS = 1.0
"""Between attempts to connect a call's bus while the broker is down."""
REDIS_TIMEOUT_SECONDS = 1.0
"""For connecting to Redis and for each of its answers: a look-up asks it up to three times while the
caller hears silence, and redis-py's own default is 5 s to connect."""
CALLER_KINDS = [
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
]


_process_lock = threading.Lock()
_process_vad: silero.VAD | None = None


def _set_up_process(settings: WorkerSettings) -> silero.VAD:
    """Logging, Silero's ONNX model and the first call's warm-up, once per worker process (the model
    costs 0.2-0.6 s of CPU).

    With the thread executor every call gets a fresh job "process" (a thread) whose prewarm runs
    while the previous call is joining its room, so a per-job load slowed every dispatch.
    """
    global _process_vad
    with _process_lock:
        if _process_vad is None:
            configure_logging(
                service=settings.service_name, json=settings.json_logs, level=settings.log_level
            )
            loaded = silero.VAD.load(min_silence_duration=settings.vad_silence_seconds)
            assert isinstance(loaded, silero.VAD)
            warm_up(settings)
            _process_vad = loaded
        return _process_vad


def job_vad(shared: silero.VAD) -> silero.VAD:
    """A VAD of its own for one job, on the process's shared ONNX session.

    The session is thread-safe and every stream keeps its own state, but a VAD object is an event
    emitter that each session subscribes to: shared between calls, one call's metrics would be
    delivered to the other calls' handlers, on the wrong thread's event loop.
    """
    return silero.VAD(session=shared._onnx_session, opts=dataclasses.replace(shared._opts))


def prewarm(proc: JobProcess) -> None:
    """Per job process (per call, with the thread executor), before its job: the settings and a VAD."""
    settings = WorkerSettings()
    proc.userdata[SETTINGS_KEY] = settings
    proc.userdata[VAD_KEY] = job_vad(_set_up_process(settings))


async def accept_job(request: JobRequest) -> None:
    """In the main process: take dispatches for rooms named by our convention, refuse the rest."""
    if not accepts_room(request.room.name):
        log.warning("job.refused", room=request.room.name[:128], reason="room name")
        await request.reject(terminate=True)
        return
    await request.accept(identity=f"agent-{request.id}", name="Agent")


async def entrypoint(ctx: JobContext) -> None:
    """One dispatched job: the call in `ctx.room`, from join to `session.ended`."""
    settings = ctx.proc.userdata.get(SETTINGS_KEY)
    call = Call(ctx, settings if isinstance(settings, WorkerSettings) else WorkerSettings())
    ctx.add_shutdown_callback(call.finish)
    await call.start()


@dataclass
class Clients:
    bus: Bus
    redis: Redis
    registry: RegistryClient
    http: aiohttp.ClientSession
    models: AsyncClient

    @classmethod
    def create(cls, settings: WorkerSettings) -> Clients:
        """The call's clients, not connected yet: Redis connects on its first command, the bus when
        `bus.connect()` is awaited."""
        bus = Bus(settings.amqp_url.get_secret_value(), exchange=settings.bus_exchange)
        redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
        registry = RegistryClient.configured(
            settings, bus=bus, redis=redis, timeout=settings.registry_timeout_seconds, answer_stale=True
        )
        return cls(
            bus=bus,
            redis=redis,
            registry=registry,
            http=tool_http_session(settings.tool_allowed_networks),
            models=model_client(settings),
        )

    async def close(self) -> None:
        await self.models.close()
        await self.http.close()
        await self.redis.aclose()
        await self.bus.close()


class Call:
    """One call's state across the job's callbacks."""

    def __init__(self, ctx: JobContext, settings: WorkerSettings) -> None:
        self._ctx = ctx
        self._settings = settings
        self._room_name = ctx.job.room.name
        self._session_id = session_id_for(self._room_name, ctx.job.metadata)
        self._clients: Clients | None = None
        self._record = CallRecord()
        self._agent: AgentConfig | None = None
        self._started: asyncio.Task[None] | None = None
        self._ended: asyncio.Task[None] | None = None
        self._bus_connected: asyncio.Task[None] | None = None
        self._bus_refused = asyncio.Event()
        """Set once an attempt to connect the call's bus failed: the broker is down."""
        self._entered_at = self._joined_at = self._looked_up_at = 0.0

    async def start(self) -> None:
        """Run the call; one that fails before its session runs is reported as `error` and left.

        Without this, an exception on the way (the join, the session's start) would leave its
        session `requested` in the call log for ever.
        """
        try:
            await self._start()
        except Exception as error:
            log.exception("call.failed")
            self._report_end("error", detail=f"the call could not start: {type(error).__name__}: {error}")
            self._ctx.shutdown("error")

    async def _start(self) -> None:
        self._entered_at = time.time()
        self._bind_logs()
        self._ctx.room.on("disconnected", self._on_room_disconnected)
        self._clients = Clients.create(self._settings)
        connected = asyncio.create_task(self._ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY))
        found = asyncio.create_task(self._look_up(self._clients.registry, self._bus()))
        try:
            await connected
            self._joined_at = time.time()
            self._log_join()
            caller = await self._wait_for_caller()
            if caller is None:
                waited = self._settings.caller_wait_seconds
                self._refuse(f"nobody joined within {waited:g} s", reason="call_failed")
                return
            # A phone call's id comes from its CallSid, known only now.
            self._session_id = session_id_for(self._room_name, self._ctx.job.metadata, caller.attributes)
            self._bind_logs()
            try:
                plan = plan_session(
                    room_name=self._room_name, metadata=self._ctx.job.metadata, attributes=caller.attributes
                )
            except PlanError as error:
                self._refuse(str(error))
                return
            agent = await found
        finally:
            found.cancel()  # a no-op once it is done; else nobody needs its answer any more
        if isinstance(agent, str):
            self._refuse(agent)
            return
        self._agent = agent
        if (reason := refusal(agent, plan)) is not None:
            self._refuse(reason)
            return
        await self._run(plan, agent, caller)

    def _bind_logs(self) -> None:
        """Tie the call's logs to its session (again once a phone call's CallSid is known)."""
        bind_correlation_id(correlation_id_for(self._ctx.job.metadata, self._session_id))
        structlog.contextvars.bind_contextvars(
            session_id=str(self._session_id), room=self._room_name, job_id=self._ctx.job.id
        )

    def _log_join(self) -> None:
        info = self._ctx._info  # livekit-agents keeps the dispatch's timestamps there
        timeline = dispatch_timeline(
            received_at=info.received_at,
            accepted_at=info.accepted_at,
            assigned_at=info.assigned_at,
            launched_at=info.launched_at,
            entered_at=self._entered_at,
            joined_at=self._joined_at,
        )
        log.info("call.joined", **timeline)

    async def _wait_for_caller(self) -> rtc.RemoteParticipant | None:
        """The caller: the SIP participant, whose attributes say which number was dialled, or the
        browser. The agent may be in the room first (a dispatch made before the caller joined), and
        its greeting must not play to an empty room."""
        try:
            return await asyncio.wait_for(
                self._ctx.wait_for_participant(kind=CALLER_KINDS), self._settings.caller_wait_seconds
            )
        except TimeoutError:
            return None

    async def _look_up(
        self, registry: RegistryClient, bus_connected: asyncio.Task[None]
    ) -> AgentConfig | str:
        """The agent the room name points at, or why there is none (see `look_up_agent`)."""
        try:
            return await look_up_agent(
                registry,
                self._room_name,
                bus_ready=lambda: self._bus_connected_or_refused(bus_connected),
                give_up_after=self._settings.lookup_give_up_seconds,
            )
        finally:
            self._looked_up_at = time.time()

    async def _bus_connected_or_refused(self, bus_connected: asyncio.Task[None]) -> None:
        """Wait, for at most `registry_timeout_seconds`, until the call's bus is connected or an
        attempt to connect it failed; never cancels the attempt."""
        refused = asyncio.create_task(self._bus_refused.wait())
        try:
            await asyncio.wait(
                {bus_connected, refused},
                timeout=self._settings.registry_timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            refused.cancel()

    async def _run(self, plan: SessionPlan, agent: AgentConfig, caller: rtc.RemoteParticipant) -> None:
        assert self._clients is not None
        vad_model = self._ctx.proc.userdata.get(VAD_KEY)
        session, voice_agent = build_session(
            agent,
            settings=self._settings,
            vad_model=vad_model if isinstance(vad_model, vad.VAD) else None,
            models=self._clients.models,
            http=self._clients.http,
            session_id=self._session_id,
            record=self._record,
        )
        session.on("close", lambda _event: self._on_session_closed())
        options = room_io.RoomOptions(
            participant_kinds=CALLER_KINDS,
            participant_identity=caller.identity,
            close_on_disconnect=True,
        )
        self._record.started_at = time.time()
        await session.start(voice_agent, room=self._ctx.room, room_options=options)
        log.info(
            "call.started",
            agent_id=str(agent.id),
            kind=type(plan).__name__,
            looked_up_ms=round((self._looked_up_at - self._entered_at) * 1000, 1),
            since_join_ms=round((time.time() - self._joined_at) * 1000, 1),
        )
        # A task of its own, which `finish` waits for: awaited here, a publish retrying through a
        # broker outage was cancelled with the entrypoint (15 s after a hang-up), silently.
        self._started = asyncio.create_task(
            self._publish(
                started_event(
                    plan,
                    agent,
                    session_id=self._session_id,
                    worker_id=self._ctx.worker_id,
                    job_id=self._ctx.job.id,
                )
            )
        )

    def _on_room_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        """The room went away (deleted, closed) -- unless the disconnect is the job's own, at its end."""
        if reason != rtc.DisconnectReason.CLIENT_INITIATED:
            self._record.room_gone = True

    def _on_session_closed(self) -> None:
        """The session closed (hang-up, end_call, error, shutdown): report it, then leave."""
        reason = self._record.reason
        log.info("call.ended", reason=reason, close_reason=self._record.close_reason)
        self._report_end(reason, detail=self._record.error, duration_seconds=self._record.duration_seconds)
        if reason == "end_call":
            # Deleting the room hangs up the SIP caller and disconnects the browser.
            self._ctx.delete_room()
        self._ctx.shutdown(reason)

    def _refuse(self, detail: str, reason: EndReason = "agent_unavailable") -> None:
        """No call for this job: report why (`agent_unavailable` unless told) and leave the room.

        The agent leaves at once: with the broker down the report can take up to
        `publish_give_up_seconds`, and the caller must not wait with a silent agent meanwhile.
        `finish` waits for it.
        """
        log.warning("call.refused", detail=detail, reason=reason)
        self._report_end(reason, detail=detail)
        self._ctx.shutdown(reason)

    def _report_end(
        self, reason: EndReason, *, detail: str | None, duration_seconds: float | None = None
    ) -> None:
        """Start publishing `session.ended`, once per call, whichever way the call ends first."""
        if self._ended is not None:
            return
        room = parse_room_name(self._room_name)
        event = ended_event(
            session_id=self._session_id,
            room_name=self._room_name,
            reason=reason,
            agent=self._agent,
            agent_id=getattr(room, "agent_id", None),
            detail=detail,
            duration_seconds=duration_seconds,
            transcript=self._record.transcript,
            turns=self._record.turns,
        )
        if self._clients is None:
            log.error("call.event_lost", event_type=event.type, event_id=str(event.id), error="no clients")
            return
        self._ended = asyncio.create_task(self._publish(event))

    def _bus(self) -> asyncio.Task[None]:
        """The call's bus connection: the attempt under way or made, or a new bounded one if the last
        gave up, so that a broker that was down when a long call began still gets the call's end."""
        assert self._clients is not None
        task = self._bus_connected
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._bus_connected = asyncio.create_task(self._connect_bus(self._clients.bus))
        return task

    async def _connect_bus(self, bus: Bus) -> None:
        """Connect the call's bus, retrying through a broker outage for up to
        `publish_give_up_seconds`, while the call goes on."""
        deadline = time.monotonic() + self._settings.publish_give_up_seconds
        while True:
            try:
                await bus.connect()
                return
            except BusUnavailable as error:
                self._bus_refused.set()
                if time.monotonic() + BUS_RETRY_SECONDS > deadline:
                    raise
                log.info("call.bus_retrying", error=str(error))
                await asyncio.sleep(BUS_RETRY_SECONDS)

    async def _publish(self, event: Event) -> None:
        """Publish, retrying through a broker outage for up to `publish_give_up_seconds`: a lost
        `session.ended` leaves a call open in the log (and its transcript is lost). The bound covers
        waiting for the bus to connect too."""
        assert self._clients is not None
        give_up_at = time.monotonic() + self._settings.publish_give_up_seconds
        try:
            await asyncio.wait_for(asyncio.shield(self._bus()), self._settings.publish_give_up_seconds)
            await self._clients.bus.publish_reliably(
                event, give_up_after=max(give_up_at - time.monotonic(), 0.0)
            )
        except (BusUnavailable, PublishError, TimeoutError) as error:
            log.error("call.event_lost", event_type=event.type, event_id=str(event.id), error=str(error))
            return
        except asyncio.CancelledError:
            log.error("call.event_lost", event_type=event.type, event_id=str(event.id), error="cancelled")
            raise
        log.info("call.published", event_type=event.type, event_id=str(event.id))

    async def finish(self, reason: str) -> None:
        """Job shutdown: report the end if nothing did yet (the job stopped before a session began),
        wait for `session.started` and `session.ended` to be confirmed, then close the clients,
        however the wait ends."""
        try:
            self._report_end(self._record.reason, detail=f"the job stopped ({reason}) before the call began")
            publishing = {task for task in (self._started, self._ended) if task is not None}
            if publishing:
                bound = self._settings.publish_give_up_seconds + FINISH_MARGIN_SECONDS
                # asyncio.wait neither cancels the publishes nor raises if one was cancelled.
                _, unconfirmed = await asyncio.wait(publishing, timeout=bound)
                if self._ended in unconfirmed:
                    log.error("call.ended_not_confirmed", reason=reason)
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._bus_connected is not None:
            self._bus_connected.cancel()
            await asyncio.gather(self._bus_connected, return_exceptions=True)
        if self._clients is not None:
            await self._clients.close()


async def look_up_agent(
    registry: RegistryClient,
    room_name: str,
    *,
    bus_ready: Callable[[], Awaitable[None]],
    give_up_after: float,
) -> AgentConfig | str:
    """The agent `room_name` points at, or why there is none, within `give_up_after` seconds.

    Runs while the agent joins the room: the name alone says which agent (its id, or the dialled
    number), so the look-up need not wait for the join or the caller. Whether the call may go
    to that agent is decided afterwards, by `plan_session` and `refusal`. The cache usually
    holds the agent (the token-service or the gateway just looked it up), so only a miss waits
    (`bus_ready`) for the broker's handshake. Without the broker, the registry client answers from
    the agent's last known config, as the gateway did when it bridged the call: at once, once the
    first attempt to connect has failed, rather than after `registry_timeout_seconds` of silence.
    Each step has a bound of its own; `give_up_after` bounds their sum, the caller's silence.
    """
    try:
        async with asyncio.timeout(give_up_after):
            room = parse_room_name(room_name)
            if isinstance(room, PhoneRoom):
                cached = await registry.cached_agent_by_number(room.number)
            else:
                cached = await registry.cached_agent(room.agent_id)
            if cached is not None:
                return cached
            await bus_ready()
            if isinstance(room, PhoneRoom):
                return await registry.agent_by_number(room.number)
            return await registry.get_agent(room.agent_id)
    except InvalidRoomName as error:
        return str(error)
    except AgentNotFound:
        return "no such agent"
    except RegistryUnavailable as error:
        return str(error)
    except TimeoutError:
        return f"the agent could not be looked up within {give_up_after:g} s"
