"""The bus against a real RabbitMQ: confirms, dead-lettering, idempotency, look-ups, broker restarts."""

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from agentline_common.bus import (
    BatchHandler,
    Bus,
    BusUnavailable,
    HoldEvents,
    PublishError,
    RpcFailure,
    RpcTimeout,
    RpcUnavailable,
    Unroutable,
    connect_until_up,
)
from agentline_common.events import (
    AgentChanged,
    AgentChangedData,
    Event,
    SessionRequested,
    SessionRequestedData,
)
from agentline_common.processed_events import InMemoryProcessedEvents, ProcessedEvents, RedisProcessedEvents
from agentline_common.testing.servers import RedisServer, free_port
from prometheus_client import CollectorRegistry, generate_latest

pytestmark = pytest.mark.integration


def session_requested() -> SessionRequested:
    agent_id = uuid.uuid4()
    return SessionRequested(
        agent_id=agent_id,
        org_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        data=SessionRequestedData(
            kind="test",
            room_name=f"test_{agent_id}_abcdefghijkl",
            requested_by=uuid.uuid4(),
            expires_at=datetime.now(UTC) + timedelta(minutes=10),
        ),
    )


@pytest.fixture
async def exchange() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_bus(amqp_url: str, exchange: str) -> AsyncIterator[Any]:
    buses: list[Bus] = []

    async def factory() -> Bus:
        bus = Bus(amqp_url, exchange=exchange)
        await bus.connect()
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        await bus.close()


async def consume_session_requests(
    bus: Bus, handle: BatchHandler, processed: ProcessedEvents, **options: Any
) -> str:
    """A fresh queue of `session.requested` that `handle` consumes in batches; its name."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    await bus.consume_batches(
        queue=queue, routing_keys=["session.requested"], handler=handle, processed=processed, **options
    )
    return queue


async def dead_letters(amqp_url: str, queue: str) -> list[bytes]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
        bodies = []
        while (message := await dlq.get(no_ack=True, fail=False)) is not None:
            bodies.append(message.body)
        return bodies


async def test_publish_consume_round_trip(make_bus: Any) -> None:
    bus = await make_bus()
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def handle(event: Event) -> None:
        await received.put(event)

    queue = f"q-{uuid.uuid4().hex[:8]}"
    await bus.consume(
        queue=queue,
        routing_keys=["session.*"],
        handler=handle,
        processed=InMemoryProcessedEvents(),
    )
    event = session_requested()
    await bus.publish(event)
    assert await asyncio.wait_for(received.get(), 10) == event


async def test_unroutable_publish_raises_and_is_counted(make_bus: Any) -> None:
    bus = await make_bus()
    registry = CollectorRegistry()
    bus.register_metrics(registry)
    with pytest.raises(Unroutable, match="no queue is bound"):
        await bus.publish(session_requested())
    await bus.consume(
        queue=f"q-{uuid.uuid4().hex[:8]}",
        routing_keys=["session.requested"],
        handler=lambda event: asyncio.sleep(0),
        processed=InMemoryProcessedEvents(),
    )
    await bus.publish(session_requested())
    text = generate_latest(registry).decode()
    assert 'agentline_bus_publishes_total{result="failed"} 1.0' in text
    assert 'agentline_bus_publishes_total{result="confirmed"} 1.0' in text


async def test_a_reliable_publish_waits_for_its_queue_to_be_bound(make_bus: Any) -> None:
    """As after a broker that lost its definitions: the consumer declares its queue again only after
    the event was first published, and returned as unroutable."""
    publisher, consumer = await make_bus(), await make_bus()
    received: asyncio.Queue[Event] = asyncio.Queue()
    event = session_requested()
    publishing = asyncio.create_task(publisher.publish_reliably(event, give_up_after=60))
    async with asyncio.timeout(30):
        while publisher.publish_failures == 0:
            await asyncio.sleep(0.05)
    await consumer.consume(
        queue=f"q-{uuid.uuid4().hex[:8]}",
        routing_keys=["session.requested"],
        handler=received.put,
        processed=InMemoryProcessedEvents(),
    )
    await asyncio.wait_for(publishing, 60)
    assert await asyncio.wait_for(received.get(), 30) == event


async def test_failing_handler_dead_letters_after_max_attempts(make_bus: Any, amqp_url: str) -> None:
    bus = await make_bus()
    attempts: list[uuid.UUID] = []

    async def always_fails(event: Event) -> None:
        attempts.append(event.id)
        raise RuntimeError("downstream is broken")

    queue = f"q-{uuid.uuid4().hex[:8]}"
    await bus.consume(
        queue=queue,
        routing_keys=["session.requested"],
        handler=always_fails,
        processed=InMemoryProcessedEvents(),
        max_attempts=3,
    )
    event = session_requested()
    await bus.publish(event)
    async with asyncio.timeout(20):
        while not (bodies := await dead_letters(amqp_url, queue)):
            await asyncio.sleep(0.2)
    assert attempts == [event.id] * 3
    assert len(bodies) == 1 and str(event.id).encode() in bodies[0]


async def test_unreadable_message_is_dead_lettered_at_once(make_bus: Any, amqp_url: str) -> None:
    bus = await make_bus()
    calls: list[Event] = []

    async def handle(event: Event) -> None:
        calls.append(event)

    queue = f"q-{uuid.uuid4().hex[:8]}"
    await bus.consume(
        queue=queue, routing_keys=["session.requested"], handler=handle, processed=InMemoryProcessedEvents()
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        target = await channel.get_exchange(bus.exchange_name)
        await target.publish(aio_pika.Message(b'{"type": "nonsense"}'), routing_key="session.requested")
    async with asyncio.timeout(10):
        while not await dead_letters(amqp_url, queue):
            await asyncio.sleep(0.2)
    assert calls == []


async def test_duplicate_delivery_is_processed_once(make_bus: Any, redis_url: str) -> None:
    from redis.asyncio import Redis

    bus = await make_bus()
    redis = Redis.from_url(redis_url)
    handled: list[uuid.UUID] = []
    done = asyncio.Event()

    async def handle(event: Event) -> None:
        handled.append(event.id)
        if isinstance(event, AgentChanged):
            done.set()

    queue = f"q-{uuid.uuid4().hex[:8]}"
    await bus.consume(
        queue=queue,
        routing_keys=["session.requested", "agent.changed"],
        handler=handle,
        processed=RedisProcessedEvents(redis),
    )
    event = session_requested()
    await bus.publish(event)
    await bus.publish(event)
    await bus.publish(AgentChanged(agent_id=uuid.uuid4(), data=AgentChangedData(change="created")))
    await asyncio.wait_for(done.wait(), 10)
    await asyncio.sleep(0.3)
    assert handled.count(event.id) == 1
    await redis.aclose()


async def test_an_event_claimed_by_a_delivery_that_died_waits_for_the_claim_instead_of_dead_lettering(
    make_bus: Any, amqp_url: str
) -> None:
    bus = await make_bus()
    processed = InMemoryProcessedEvents(claim_seconds=3)
    handled: asyncio.Queue[uuid.UUID] = asyncio.Queue()

    async def handle(event: Event) -> None:
        await handled.put(event.id)

    queue = f"q-{uuid.uuid4().hex[:8]}"
    await bus.consume(queue=queue, routing_keys=["session.requested"], handler=handle, processed=processed)
    event = session_requested()
    await processed.claim(queue, [event.id])  # as if a consumer took it and then crashed
    await bus.publish(event)
    assert await asyncio.wait_for(handled.get(), 15) == event.id
    assert await dead_letters(amqp_url, queue) == []


async def test_events_wait_in_the_consumer_while_the_claim_store_is_down(
    make_bus: Any, amqp_url: str, tmp_path: Path
) -> None:
    from redis.asyncio import Redis

    store = RedisServer(base_dir=tmp_path)
    store.start()
    redis = Redis.from_url(store.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        bus = await make_bus()
        handled: asyncio.Queue[uuid.UUID] = asyncio.Queue()

        async def handle(event: Event) -> None:
            await handled.put(event.id)

        queue = f"q-{uuid.uuid4().hex[:8]}"
        await bus.consume(
            queue=queue,
            routing_keys=["session.requested"],
            handler=handle,
            processed=RedisProcessedEvents(redis),
        )
        store.stop()
        event = session_requested()
        await bus.publish(event)
        await asyncio.sleep(3)
        assert handled.empty()
        assert await dead_letters(amqp_url, queue) == []
        store.start()
        assert await asyncio.wait_for(handled.get(), 15) == event.id
    finally:
        await redis.aclose()
        store.stop()


async def test_request_reply_and_typed_errors(make_bus: Any) -> None:
    server, client = await make_bus(), await make_bus()

    async def echo(params: dict[str, Any]) -> dict[str, Any]:
        if params.get("id") == "missing":
            raise RpcFailure("not_found", "no such thing")
        return {"echo": params}

    await server.serve(queue=f"rpc-{uuid.uuid4().hex[:8]}", methods={"thing.get": echo})
    assert await client.request("thing.get", {"id": "a"}) == {"echo": {"id": "a"}}
    with pytest.raises(RpcFailure) as failure:
        await client.request("thing.get", {"id": "missing"})
    assert failure.value.code == "not_found"


async def test_request_without_responder_raises_within_its_bound(make_bus: Any) -> None:
    client = await make_bus()
    started = asyncio.get_running_loop().time()
    with pytest.raises(RpcUnavailable, match="no service answers"):
        await client.request("nobody.home", {}, timeout=1.0)
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_request_to_a_silent_responder_times_out(make_bus: Any) -> None:
    server, client = await make_bus(), await make_bus()

    async def slow(params: dict[str, Any]) -> None:
        await asyncio.sleep(5)

    await server.serve(queue=f"rpc-{uuid.uuid4().hex[:8]}", methods={"slow.get": slow})
    started = asyncio.get_running_loop().time()
    with pytest.raises(RpcTimeout):
        await client.request("slow.get", {}, timeout=0.5)
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_publish_to_a_stopped_broker_raises_instead_of_hanging(rabbitmq: Any, make_bus: Any) -> None:
    bus = await make_bus()
    await bus.consume(
        queue=f"q-{uuid.uuid4().hex[:8]}",
        routing_keys=["session.requested"],
        handler=lambda event: asyncio.sleep(0),
        processed=InMemoryProcessedEvents(),
    )
    await asyncio.to_thread(rabbitmq.stop)
    try:
        with pytest.raises(PublishError):
            await bus.publish(session_requested(), timeout=2.0)
        with pytest.raises(RpcUnavailable):
            await bus.request("anything.get", {}, timeout=1.0)
    finally:
        await asyncio.to_thread(rabbitmq.start)


async def test_no_event_lost_across_a_broker_restart(rabbitmq: Any, make_bus: Any) -> None:
    total = 1000
    consumer_bus, publisher_bus = await make_bus(), await make_bus()
    seen: set[uuid.UUID] = set()
    all_seen = asyncio.Event()

    async def handle(event: Event) -> None:
        seen.add(event.id)
        if len(seen) == total:
            all_seen.set()

    await consumer_bus.consume(
        queue=f"q-{uuid.uuid4().hex[:8]}",
        routing_keys=["agent.changed"],
        handler=handle,
        processed=InMemoryProcessedEvents(),
        prefetch=50,
    )
    events = [
        AgentChanged(agent_id=uuid.uuid4(), data=AgentChangedData(change="updated")) for _ in range(total)
    ]

    async def publish_all() -> None:
        for event in events:
            await publisher_bus.publish_reliably(event, give_up_after=120)

    async def restart_midway() -> None:
        while len(seen) < total // 3:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(rabbitmq.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(rabbitmq.start)

    await asyncio.wait_for(asyncio.gather(publish_all(), restart_midway()), 240)
    await asyncio.wait_for(all_seen.wait(), 120)
    assert seen == {event.id for event in events}


async def test_an_event_held_across_a_broker_restart_holds_up_nothing_after_it(
    rabbitmq: Any, make_bus: Any
) -> None:
    """A held delivery of the closed channel is still around when the new channel's deliveries come
    (aio-pika refuses to name a closed channel): they must be handled, not stranded unacked."""
    consumer_bus, publisher_bus = await make_bus(), await make_bus()
    processed = InMemoryProcessedEvents(claim_seconds=120)
    handled: asyncio.Queue[uuid.UUID] = asyncio.Queue()

    async def handle(events: Sequence[Event]) -> None:
        for event in events:
            await handled.put(event.id)

    queue = f"q-{uuid.uuid4().hex[:8]}"
    await consumer_bus.consume_batches(
        queue=queue, routing_keys=["agent.changed"], handler=handle, processed=processed
    )
    held, after = (AgentChanged(agent_id=uuid.uuid4(), data=AgentChangedData(change="updated")) for _ in "ab")
    await processed.claim(queue, [held.id])  # claimed by a delivery that died: held for two minutes
    await publisher_bus.publish(held)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(rabbitmq.stop)
    await asyncio.to_thread(rabbitmq.start)
    await publisher_bus.publish_reliably(after, give_up_after=60)
    assert await asyncio.wait_for(handled.get(), 30) == after.id


async def test_batches_apply_each_event_once_and_dead_letter_only_the_poison(
    make_bus: Any, amqp_url: str, redis_url: str
) -> None:
    from redis.asyncio import Redis

    bus = await make_bus()
    redis = Redis.from_url(redis_url)
    gate = asyncio.Event()
    batches: list[list[uuid.UUID]] = []
    applied: list[uuid.UUID] = []
    poison = session_requested()

    async def handle(events: Sequence[Event]) -> None:
        # Holding the first batch lets the rest queue up behind it, as under load.
        await gate.wait()
        ids = [event.id for event in events]
        batches.append(ids)
        if poison.id in ids:
            raise RuntimeError("this batch's transaction rolls back")
        applied.extend(ids)

    queue = await consume_session_requests(bus, handle, RedisProcessedEvents(redis), max_attempts=3)
    good = [session_requested() for _ in range(20)]
    for event in [*good[:10], poison, *good[10:], good[3]]:
        await bus.publish(event)
    gate.set()
    async with asyncio.timeout(20):
        while not (bodies := await dead_letters(amqp_url, queue)) or len(set(applied)) < len(good):
            await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # the duplicate of good[3] comes back once more, and must be skipped
    assert sorted(applied) == sorted(event.id for event in good)
    assert max(len(batch) for batch in batches) > 2
    assert batches.count([poison.id]) == 3  # alone on each of its deliveries, then dead-lettered
    assert len(bodies) == 1 and str(poison.id).encode() in bodies[0]
    await redis.aclose()


async def test_events_whose_handler_says_hold_spend_no_deliveries(
    make_bus: Any, amqp_url: str, redis_url: str
) -> None:
    """A handler whose database is locked for longer than the delivery limit's worth of tries: the
    events wait in the consumer instead of going to the dead letters."""
    from redis.asyncio import Redis

    bus = await make_bus()
    redis = Redis.from_url(redis_url)
    tries: list[uuid.UUID] = []
    applied: list[uuid.UUID] = []

    async def handle(events: Sequence[Event]) -> None:
        tries.extend(event.id for event in events)
        if len(tries) <= 4:
            raise HoldEvents("the database is locked") from TimeoutError()
        applied.extend(event.id for event in events)

    queue = await consume_session_requests(bus, handle, RedisProcessedEvents(redis), max_attempts=2)
    event = session_requested()
    await bus.publish(event)
    async with asyncio.timeout(30):
        while not applied:
            await asyncio.sleep(0.1)
    assert applied == [event.id]
    assert tries == [event.id] * 5
    assert await dead_letters(amqp_url, queue) == []
    await redis.aclose()


async def test_a_batch_waits_briefly_for_more_events_and_is_acked_whole(make_bus: Any, amqp_url: str) -> None:
    bus = await make_bus()
    batches: list[int] = []

    async def handle(events: Sequence[Event]) -> None:
        batches.append(len(events))

    queue = await consume_session_requests(bus, handle, InMemoryProcessedEvents(), gather_seconds=1.0)
    # At once, so that all five arrive within the gathering second even when confirms are slow.
    await asyncio.gather(*(bus.publish(session_requested()) for _ in range(5)))
    async with asyncio.timeout(10):
        while sum(batches) < 5:
            await asyncio.sleep(0.05)
    assert batches == [5]

    # The batch is acked with one `multiple` ack; were any of its events left unacked, closing the
    # consumer would put them back in the queue.
    await asyncio.sleep(0.2)  # the ack is a frame on its way, not a round trip
    await bus.close()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count == 0


async def test_connect_until_up_tries_the_subscriptions_again_when_they_fail(
    amqp_url: str, exchange: str
) -> None:
    """A broker that flaps can accept the connection and refuse the first channel: the service must
    not be left without its subscriptions (and its cache invalidation) until it restarts."""
    bus = Bus(amqp_url, exchange=exchange)
    tries = 0

    async def subscribe() -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionError("the channel was refused")

    try:
        await asyncio.wait_for(connect_until_up(bus, then=subscribe, retry_seconds=0.05), 10)
    finally:
        await bus.close()
    assert tries == 2


async def test_a_broker_that_is_not_there_is_reported_and_no_connection_is_left_open() -> None:
    port = free_port()
    bus = Bus(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=2.0)

    with pytest.raises(BusUnavailable, match="cannot reach the message broker"):
        await bus.connect()

    gc.collect()
    left_open = [
        item
        for item in gc.get_objects()
        if isinstance(item, aio_pika.RobustConnection) and item.url.port == port and not item.is_closed
    ]
    assert left_open == []
