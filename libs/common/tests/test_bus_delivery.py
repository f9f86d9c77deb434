"""How a consumer treats deliveries of a channel that closed under it (a broker restart), with small
fake messages: the broker side of it is covered against the real RabbitMQ in test_bus.py."""

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from agentline_common.bus import _EventDelivery
from agentline_common.events import AgentChanged, AgentChangedData, Event
from agentline_common.processed_events import InMemoryProcessedEvents
from aio_pika.exceptions import ChannelInvalidStateError

pytestmark = pytest.mark.unit

QUEUE = "q-delivery"


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed = False


class FakeMessage:
    """What `_EventDelivery` uses of aio-pika's IncomingMessage; its channel raises once closed."""

    def __init__(self, channel: FakeChannel, tag: int) -> None:
        self._channel = channel
        self.delivery_tag = tag
        self.headers: dict[str, Any] = {}
        self.acked = False

    @property
    def channel(self) -> FakeChannel:
        if self._channel.is_closed:
            raise ChannelInvalidStateError
        return self._channel

    async def ack(self, multiple: bool = False) -> None:
        if self._channel.is_closed:
            raise ChannelInvalidStateError
        self.acked = True

    async def nack(self, requeue: bool = True) -> None:
        if self._channel.is_closed:
            raise ChannelInvalidStateError


def changed() -> Event:
    return AgentChanged(agent_id=uuid.uuid4(), data=AgentChangedData(change="updated"))


async def handled_after(
    waiting: list[tuple[FakeMessage, Event]], processed: InMemoryProcessedEvents
) -> list[uuid.UUID]:
    handled: list[uuid.UUID] = []

    async def handle(events: Sequence[Event]) -> None:
        handled.extend(event.id for event in events)

    delivery = _EventDelivery(QUEUE, handle, processed, max_batch=16, gather_seconds=0.0)
    for message, event in waiting:
        delivery._waiting.append((message, event))  # type: ignore[arg-type]
    delivery._wake()
    await asyncio.sleep(0.1)
    return handled


@pytest.mark.parametrize("old_claim", ["busy", "done", "new"])
async def test_a_delivery_of_a_closed_channel_does_not_take_its_batch_down(old_claim: str) -> None:
    old_channel, new_channel = FakeChannel(), FakeChannel()
    old_event, new_event = changed(), changed()
    processed = InMemoryProcessedEvents()
    if old_claim != "new":
        await processed.claim(QUEUE, [old_event.id])
    if old_claim == "done":
        await processed.complete(QUEUE, [old_event.id])
    old_message, new_message = FakeMessage(old_channel, 7), FakeMessage(new_channel, 1)
    old_channel.is_closed = True

    handled = await handled_after([(old_message, old_event), (new_message, new_event)], processed)

    assert handled == [new_event.id]
    assert new_message.acked and not old_message.acked
