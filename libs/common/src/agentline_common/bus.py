"""The event bus and look-ups over RabbitMQ (aio-pika).

Publishing: one durable topic exchange, persistent JSON messages, `message_id` = event id, publisher
confirms on and `mandatory` set, so a message no queue takes or the broker does not confirm raises
PublishError instead of vanishing.

Consuming: each consumer owns a durable quorum queue. The handler runs first, then the event id is
recorded as processed and the message acked; a redelivered event already recorded is acked without
running the handler again. A failing handler's message goes back to the queue; the broker counts its
deliveries (`x-delivery-limit`) and dead-letters it to ``<queue>.dlq`` once the limit is reached, so a
poison message never loops forever. An event whose fate is not known yet (another delivery of it is
being handled, the idempotency store cannot be reached, or the handler raises HoldEvents because its
own store cannot) is held by the consumer and looked at again, unacked, so it spends none of its
deliveries. `consume_batches` hands the handler every event
that arrived while the previous batch was being handled, so a consumer that writes to a database
commits once for many events; a batch that fails is retried one event at a time, so only the bad
event goes back.

Look-ups: request/reply with `reply_to` + `correlation_id`; the caller waits a bounded time and gets
RpcUnavailable (nobody serves the method), RpcTimeout (nobody answered in time) or RpcFailure (the
responder answered with an error code), never a hang.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError
from aio_pika.exceptions import PublishError as ReturnedError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from agentline_common.events import Event, encode_event, parse_event
from agentline_common.logging import CORRELATION_HEADER, bind_correlation_id, current_correlation_id
from agentline_common.processed_events import Claim, ProcessedEvents

log = structlog.get_logger()

RPC_PREFIX = "rpc."
DEFAULT_RPC_TIMEOUT = 2.0
CONNECT_RETRY_SECONDS = 2.0
"""How often `connect_until_up` tries the broker again while it is down."""
HOLD_SECONDS = 1.0
"""How long a consumer keeps an event it cannot judge yet (claimed elsewhere, claim store down)."""
_CONNECTION_ERRORS = (AMQPError, ConnectionError, OSError, RuntimeError)

EventHandler = Callable[[Event], Awaitable[None]]
BatchHandler = Callable[[Sequence[Event]], Awaitable[None]]
RpcMethod = Callable[[dict[str, Any]], Awaitable[Any]]


class BusError(Exception):
    """Base of every bus failure."""


class BusUnavailable(BusError):
    """The broker cannot be reached."""


class PublishError(BusError):
    """The broker did not take responsibility for the message (unroutable, nacked or unreachable)."""


class Unroutable(PublishError):
    """No queue is bound for the routing key (yet: a broker that lost its definitions has none until
    its consumers declare their queues again, which `publish_reliably` waits for)."""


class HoldEvents(Exception):
    """Raised by a consumer's handler that cannot judge its events yet (its database is down or
    locked): they are held and handed over again, unacked, spending none of their deliveries, as a
    failing handler's would until they were dead-lettered."""


class RpcError(BusError):
    """A look-up did not produce an answer."""


class RpcUnavailable(RpcError):
    """No responder serves the method, or the broker is unreachable."""


class RpcTimeout(RpcError):
    """The request was delivered but no answer came back within the bound."""


class RpcFailure(RpcError):
    """The responder answered with a typed error, e.g. ``not_found``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class QueueNames:
    queue: str
    dead_letter_queue: str
    dead_letter_routing_key: str


def queue_names(queue: str) -> QueueNames:
    return QueueNames(queue=queue, dead_letter_queue=f"{queue}.dlq", dead_letter_routing_key=queue)


class Bus:
    """One connection and one confirming channel to the broker, with automatic reconnection."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "agentline",
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self._url = url
        self._reconnect_interval = reconnect_interval
        self._exchange_name = exchange
        self._connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._dead_letter_exchange: AbstractRobustExchange | None = None
        self._reply_queue: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reply_lock = asyncio.Lock()
        self.published = 0
        self.publish_failures = 0

    @property
    def exchange_name(self) -> str:
        return self._exchange_name

    @property
    def dead_letter_exchange_name(self) -> str:
        return f"{self._exchange_name}.dlx"

    @property
    def is_connected(self) -> bool:
        """True while the connection is open (readiness probes use this).

        A robust connection that lost the broker is not closed, only reconnecting: `connected` says
        whether it is up right now.
        """
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def connect(self) -> None:
        """Open the connection and declare the exchanges. Raises BusUnavailable if unreachable."""
        # Built here rather than by connect_robust, which drops a connection that fails to connect
        # without closing it: the garbage collector then warns of a close() never awaited.
        self._connection = aio_pika.RobustConnection(
            make_url(self._url),
            reconnect_interval=self._reconnect_interval,
            client_properties={"connection_name": "agentline"},
        )
        try:
            await self._connection.connect(timeout=self._connect_timeout)
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._channel = channel
            self._exchange = await channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._dead_letter_exchange = await channel.declare_exchange(
                self.dead_letter_exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
            )
        except (TimeoutError, *_CONNECTION_ERRORS) as error:
            await self.close()
            raise BusUnavailable(f"cannot reach the message broker: {type(error).__name__}") from error

    async def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RpcUnavailable("the bus was closed"))
        self._pending.clear()
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._channel = self._exchange = self._reply_queue = None

    def _require_channel(self) -> tuple[AbstractRobustChannel, AbstractRobustExchange]:
        if self._channel is None or self._exchange is None:
            raise BusUnavailable("the bus is not connected")
        return self._channel, self._exchange

    async def publish(self, event: Event, *, timeout: float = 5.0) -> None:
        """Publish `event` and wait until the broker confirms it. Raises PublishError otherwise."""
        try:
            await self._publish_confirmed(event, timeout=timeout)
        except PublishError:
            self.publish_failures += 1
            raise
        self.published += 1

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export this bus's publish counts on `registry` (every service's /metrics)."""
        registry.register(_BusCollector(self))

    async def _publish_confirmed(self, event: Event, *, timeout: float) -> None:
        try:
            _, exchange = self._require_channel()
        except BusUnavailable as error:
            raise PublishError(str(error)) from error
        message = aio_pika.Message(
            body=encode_event(event),
            message_id=str(event.id),
            type=event.type,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={CORRELATION_HEADER: current_correlation_id() or ""},
        )
        try:
            # The timeout must cover the whole call: while disconnected, a robust channel waits for
            # the reconnection before it even sends the frame.
            async with asyncio.timeout(timeout):
                await exchange.publish(message, routing_key=event.type, mandatory=True)
        except ReturnedError as error:
            raise Unroutable(f"{event.type} {event.id}: no queue is bound for it") from error
        except DeliveryError as error:
            raise PublishError(f"{event.type} {event.id} was refused by the broker") from error
        except (TimeoutError, *_CONNECTION_ERRORS) as error:
            raise PublishError(
                f"{event.type} {event.id} was not confirmed: broker unavailable ({type(error).__name__})"
            ) from error
        log.debug("bus.published", event_type=event.type, event_id=str(event.id))

    async def publish_reliably(
        self, event: Event, *, give_up_after: float = 60.0, attempt_timeout: float = 5.0
    ) -> None:
        """Publish `event`, retrying through broker outages until confirmed or `give_up_after` passes.

        An unroutable publish is retried too: after a broker restart that lost its definitions, the
        consumers' queues come back only as each consumer reconnects and declares its own, and an
        event published before would be lost. A retried publish whose first confirm was lost can
        deliver the event twice; consumers are idempotent on the event id, so at-least-once is the
        right trade here.
        """
        deadline = asyncio.get_running_loop().time() + give_up_after
        delay = 0.05
        while True:
            try:
                await self.publish(event, timeout=attempt_timeout)
                return
            except PublishError as error:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                log.info(
                    "bus.publish_retrying", event_type=event.type, event_id=str(event.id), error=str(error)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def consume(
        self,
        *,
        queue: str,
        routing_keys: Sequence[str],
        handler: EventHandler,
        processed: ProcessedEvents,
        max_attempts: int = 5,
        prefetch: int = 16,
    ) -> None:
        """Deliver events routed by `routing_keys` to `handler`, one at a time, through the durable
        queue `queue`."""

        async def handle_one(events: Sequence[Event]) -> None:
            (event,) = events
            await handler(event)

        await self.consume_batches(
            queue=queue,
            routing_keys=routing_keys,
            handler=handle_one,
            processed=processed,
            max_attempts=max_attempts,
            prefetch=prefetch,
            max_batch=1,
        )

    async def consume_batches(
        self,
        *,
        queue: str,
        routing_keys: Sequence[str],
        handler: BatchHandler,
        processed: ProcessedEvents,
        max_attempts: int = 5,
        prefetch: int = 256,
        max_batch: int = 128,
        gather_seconds: float = 0.0,
    ) -> None:
        """Deliver events routed by `routing_keys` to `handler` in batches of up to `max_batch`, in
        arrival order, through the durable queue `queue`. A batch is whatever arrived while the previous
        one was handled, plus up to `gather_seconds` of waiting for more when it is not full: one event
        when idle, many under load. Each event is acked once its batch succeeded; `prefetch` above
        `max_batch` lets the next batch gather meanwhile."""
        channel = await self._consumer_channel(prefetch)
        names = queue_names(queue)
        dead_letters = await channel.declare_queue(
            names.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_letters.bind(self.dead_letter_exchange_name, names.dead_letter_routing_key)
        declared = await channel.declare_queue(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": max(max_attempts - 1, 0),
                "x-dead-letter-exchange": self.dead_letter_exchange_name,
                "x-dead-letter-routing-key": names.dead_letter_routing_key,
            },
        )
        for key in routing_keys:
            await declared.bind(self._exchange_name, key)
        delivery = _EventDelivery(
            queue, handler, processed, max_batch=max_batch, gather_seconds=gather_seconds
        )
        await declared.consume(delivery.on_message)
        log.info("bus.consuming", queue=queue, routing_keys=list(routing_keys), max_batch=max_batch)

    async def subscribe(self, *, routing_keys: Sequence[str], handler: EventHandler) -> None:
        """Deliver events to this process only, through a private queue that vanishes with it.

        For work that every instance must do and that may be missed safely while it is down, such as
        dropping cache entries; durable work belongs in `consume`.
        """
        channel = await self._consumer_channel(prefetch=64)
        declared = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in routing_keys:
            await declared.bind(self._exchange_name, key)
        await declared.consume(_Subscription(handler).on_message)

    async def _consumer_channel(self, prefetch: int) -> AbstractRobustChannel:
        if self._connection is None:
            raise BusUnavailable("the bus is not connected")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def serve(self, *, queue: str, methods: Mapping[str, RpcMethod], prefetch: int = 64) -> None:
        """Answer look-ups for `methods` (e.g. ``agent.get``) from the shared queue `queue`."""
        channel = await self._consumer_channel(prefetch)
        declared = await channel.declare_queue(
            queue, durable=True, arguments={"x-message-ttl": int(DEFAULT_RPC_TIMEOUT * 5 * 1000)}
        )
        for method in methods:
            await declared.bind(self._exchange_name, RPC_PREFIX + method)
        await declared.consume(_RpcResponder(channel, methods).on_message)
        log.info("bus.serving", queue=queue, methods=sorted(methods))

    async def request(
        self, method: str, params: Mapping[str, Any], *, timeout: float = DEFAULT_RPC_TIMEOUT
    ) -> Any:
        """Call `method` on whichever service serves it and return its result."""
        try:
            _, exchange = self._require_channel()
            async with asyncio.timeout(timeout):
                reply_queue = await self._ensure_reply_queue()
        except (BusUnavailable, TimeoutError, *_CONNECTION_ERRORS) as error:
            raise RpcUnavailable(f"{method}: the message broker is unreachable") from error
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        message = aio_pika.Message(
            body=json.dumps({"params": dict(params)}).encode(),
            correlation_id=correlation_id,
            reply_to=reply_queue.name,
            content_type="application/json",
            expiration=timeout,
            headers={CORRELATION_HEADER: current_correlation_id() or ""},
        )
        try:
            async with asyncio.timeout(timeout):
                try:
                    await exchange.publish(message, routing_key=RPC_PREFIX + method, mandatory=True)
                except DeliveryError as error:
                    raise RpcUnavailable(f"{method}: no service answers this look-up") from error
                except _CONNECTION_ERRORS as error:
                    raise RpcUnavailable(f"{method}: the message broker is unreachable") from error
                reply = await future
        except TimeoutError as error:
            raise RpcTimeout(f"{method}: no answer within {timeout:g} s") from error
        finally:
            self._pending.pop(correlation_id, None)
        if reply.get("ok"):
            return reply.get("result")
        error_body = reply.get("error") or {}
        raise RpcFailure(str(error_body.get("code", "error")), str(error_body.get("message", "")))

    async def _ensure_reply_queue(self) -> AbstractQueue:
        if self._reply_queue is not None:
            return self._reply_queue
        async with self._reply_lock:
            if self._reply_queue is None:
                channel, _ = self._require_channel()
                queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
                await queue.consume(self._on_reply, no_ack=True)
                self._reply_queue = queue
        return self._reply_queue

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            return
        try:
            future.set_result(json.loads(message.body))
        except ValueError:
            future.set_result({"ok": False, "error": {"code": "bad_reply", "message": "unreadable"}})


async def connect_until_up(
    bus: Bus, *, then: Callable[[], Awaitable[None]], retry_seconds: float = CONNECT_RETRY_SECONDS
) -> None:
    """Connect `bus`, retrying while the broker is down, then run `then` (the subscriptions that need
    the connection). Run as a task from a service's start-up, so that the service starts and answers
    without the broker (not ready; a clear 503 where it is needed) rather than exiting into a crash
    loop. Once connected, aio-pika's robust connection reconnects by itself; `then` is retried too, as
    a broker that flaps can refuse the first channel right after accepting the connection."""
    while True:
        try:
            await bus.connect()
            break
        except BusUnavailable as error:
            log.warning("bus.connect_failed", error=str(error), retry_in=retry_seconds)
            await asyncio.sleep(retry_seconds)
    while True:
        try:
            await then()
            break
        except (*_CONNECTION_ERRORS, BusError) as error:
            log.warning("bus.subscribe_failed", error=repr(error)[:300], retry_in=retry_seconds)
            await asyncio.sleep(retry_seconds)
    log.info("bus.connected")


class _BusCollector(Collector):
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def collect(self) -> Iterator[Metric]:
        published = CounterMetricFamily(
            "agentline_bus_publishes",
            "Events the broker confirmed, and publishes it did not.",
            labels=["result"],
        )
        published.add_metric(["confirmed"], self._bus.published)
        published.add_metric(["failed"], self._bus.publish_failures)
        yield published


_Delivery = tuple[AbstractIncomingMessage, Event]


class _EventDelivery:
    """Runs one consumer's handler over its deliveries: parse, skip duplicates, handle, record, ack.

    Deliveries wait in arrival order; one worker task at a time takes up to `max_batch` of them, so the
    handler never runs twice at once for one consumer and a batch grows with the backlog.
    """

    def __init__(
        self,
        queue: str,
        handler: BatchHandler,
        processed: ProcessedEvents,
        *,
        max_batch: int,
        gather_seconds: float,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._processed = processed
        self._max_batch = max_batch
        self._gather_seconds = gather_seconds
        self._waiting: list[_Delivery] = []
        self._held: list[_Delivery] = []
        self._worker: asyncio.Task[None] | None = None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except ValidationError as error:
            log.error("bus.event_unreadable", queue=self._queue, error=str(error)[:500])
            await message.reject(requeue=False)
            return
        self._waiting.append((message, event))
        self._wake()

    def _wake(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"bus.consume:{self._queue}")

    async def _work(self) -> None:
        # Ends when nothing waits; on_message starts a new one for the next delivery.
        while self._waiting:
            if len(self._waiting) < self._max_batch and self._gather_seconds > 0:
                await asyncio.sleep(self._gather_seconds)
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                await self._handle(batch)
            except _CONNECTION_ERRORS as error:
                # The channel closed under us: the broker redelivers every unacked message.
                log.warning("bus.batch_abandoned", queue=self._queue, size=len(batch), error=repr(error))

    async def _handle(self, batch: list[_Delivery]) -> None:
        # A delivery of a channel that closed since (a broker restart) comes again on the new one;
        # handling this copy could only fail at its ack, and take the rest of the batch with it.
        batch = [delivery for delivery in batch if _open_channel(delivery[0]) is not None]
        if not batch:
            return
        try:
            claims = await self._processed.claim(self._queue, [event.id for _, event in batch])
        except Exception as error:
            log.warning("bus.claims_unavailable", queue=self._queue, size=len(batch), error=repr(error)[:500])
            self._hold(batch)
            return
        fresh = [delivery for delivery, claim in zip(batch, claims, strict=True) if claim is Claim.NEW]
        done = [delivery for delivery, claim in zip(batch, claims, strict=True) if claim is Claim.DONE]
        busy = [delivery for delivery, claim in zip(batch, claims, strict=True) if claim is Claim.BUSY]
        for _, event in (*done, *busy):
            log.info("bus.duplicate_skipped", queue=self._queue, event_id=str(event.id))
        for message, _ in done:
            await message.ack()
        self._hold(busy)
        if fresh:
            await self._run(fresh, ack_together=self._nothing_unsettled_before(fresh))

    def _hold(self, deliveries: list[_Delivery]) -> None:
        """Look at `deliveries` again after HOLD_SECONDS, keeping them unacked meanwhile.

        A claim held by another delivery (which ends, or lapses after its claim time) and an
        unreachable claim store say nothing against the event, so neither may spend one of its
        deliveries: nacking would, and the broker dead-letters an event at its delivery limit. Unacked,
        the events are redelivered if this consumer goes away.
        """
        if not deliveries:
            return
        self._held.extend(deliveries)
        asyncio.get_running_loop().call_later(HOLD_SECONDS, self._take_back, deliveries)

    def _take_back(self, deliveries: list[_Delivery]) -> None:
        returning = {id(message) for message, _ in deliveries}
        self._held = [delivery for delivery in self._held if id(delivery[0]) not in returning]
        self._waiting.extend(deliveries)
        self._wake()

    def _nothing_unsettled_before(self, deliveries: list[_Delivery]) -> bool:
        """Whether one `multiple` ack of the last of `deliveries` would settle only them: no held or
        waiting delivery of their channel has a lower tag."""
        channel = _open_channel(deliveries[0][0])
        if channel is None:
            return False
        last = max(message.delivery_tag or 0 for message, _ in deliveries)
        return all(
            _open_channel(message) is not channel or (message.delivery_tag or 0) > last
            for message, _ in (*self._waiting, *self._held)
        )

    async def _run(self, fresh: list[_Delivery], *, ack_together: bool = False) -> None:
        first_message = fresh[0][0]
        bind_correlation_id(
            _header_text((first_message.headers or {}).get(CORRELATION_HEADER)) if len(fresh) == 1 else None
        )
        event_ids = [event.id for _, event in fresh]
        try:
            await self._handler([event for _, event in fresh])
        except HoldEvents as error:
            log.warning(
                "bus.events_held", queue=self._queue, size=len(fresh), error=repr(error.__cause__)[:500]
            )
            await self._forget_claims(event_ids)
            self._hold(fresh)
            return
        except Exception as error:
            if len(fresh) > 1:
                # One bad event must not hold back the rest: each alone again, so only the bad one
                # goes back to the queue (and to the dead letters at its delivery limit).
                log.warning("bus.batch_failed", queue=self._queue, size=len(fresh), error=repr(error)[:500])
                for delivery in fresh:
                    await self._run([delivery])
                return
            await self._forget_claims(event_ids)
            await self._retry_later(fresh, error)
            return
        try:
            await self._processed.complete(self._queue, event_ids)
        except Exception as error:
            # The work is committed; only the duplicate guard is late. The claims still block copies
            # until they lapse, which is the best we can do without the store.
            log.warning("bus.completion_not_recorded", queue=self._queue, size=len(fresh), error=repr(error))
        await _ack(fresh, together=ack_together)

    async def _forget_claims(self, event_ids: list[uuid.UUID]) -> None:
        try:
            await self._processed.release(self._queue, event_ids)
        except Exception as error:
            log.warning("bus.claim_not_released", queue=self._queue, size=len(event_ids), error=repr(error))

    async def _retry_later(self, deliveries: list[_Delivery], error: Exception) -> None:
        for message, event in deliveries:
            log.warning(
                "bus.handler_failed",
                queue=self._queue,
                event_id=str(event.id),
                event_type=event.type,
                delivery_count=(message.headers or {}).get("x-delivery-count", 0),
                error=repr(error)[:500],
            )
        await asyncio.sleep(0.05)
        for message, _ in deliveries:
            await message.nack(requeue=True)


def _open_channel(message: AbstractIncomingMessage) -> object | None:
    """The channel `message` came on, or None once it closed (aio-pika raises then): the broker
    delivers its unacked messages again on the new channel, so a closed one holds nothing to settle."""
    try:
        return message.channel
    except ChannelInvalidStateError:
        return None


async def _ack(deliveries: list[_Delivery], *, together: bool) -> None:
    """Ack `deliveries`. `together` says no other delivery of their channel up to the last of them is
    unsettled, so one `multiple` ack covers them all instead of one frame, and one piece of broker
    work, per event."""
    messages = [message for message, _ in deliveries]
    channels = {id(message.channel) for message in messages}
    if together and len(channels) == 1 and len(messages) > 1:
        last = max(messages, key=lambda message: message.delivery_tag or 0)
        await last.ack(multiple=True)
        return
    for message in messages:
        await message.ack()


class _Subscription:
    def __init__(self, handler: EventHandler) -> None:
        self._handler = handler

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            try:
                event = parse_event(message.body)
            except ValidationError:
                log.warning("bus.event_unreadable", routing_key=message.routing_key)
                return
            try:
                await self._handler(event)
            except Exception:
                log.exception("bus.subscriber_failed", event_type=event.type, event_id=str(event.id))


class _RpcResponder:
    def __init__(self, channel: AbstractRobustChannel, methods: Mapping[str, RpcMethod]) -> None:
        self._channel = channel
        self._methods = methods

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            bind_correlation_id(_header_text((message.headers or {}).get(CORRELATION_HEADER)))
            method = (message.routing_key or "").removeprefix(RPC_PREFIX)
            reply = await self._answer(method, message.body)
            if message.reply_to:
                await self._channel.default_exchange.publish(
                    aio_pika.Message(
                        body=json.dumps(reply, default=str).encode(),
                        correlation_id=message.correlation_id,
                        content_type="application/json",
                    ),
                    routing_key=message.reply_to,
                )

    async def _answer(self, method: str, body: bytes) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            return _rpc_error("unknown_method", f"{method!r} is not served here")
        try:
            params = json.loads(body).get("params", {})
            if not isinstance(params, dict):
                raise ValueError("params must be an object")
        except (ValueError, AttributeError) as error:
            return _rpc_error("bad_request", str(error))
        try:
            return {"ok": True, "result": await handler(params)}
        except RpcFailure as failure:
            return _rpc_error(failure.code, failure.message)
        except Exception as error:
            log.exception("bus.rpc_failed", method=method)
            return _rpc_error("internal", type(error).__name__)


def _rpc_error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _header_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) and value else None
