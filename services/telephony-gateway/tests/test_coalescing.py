"""The coalescer: what arrives while a batch is in flight goes together in the next one."""

from __future__ import annotations

import asyncio

import pytest
from agentline_telephony.coalescing import Coalescer

pytestmark = pytest.mark.unit


class Recorder:
    """A batch function that records its batches and holds each one until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on: int | None = None

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on}")
        return [item * 10 for item in items]


async def test_a_lone_item_goes_out_at_once() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer: Coalescer[int, int] = Coalescer(recorder.run, name="test")

    assert await coalescer.submit(7) == 70
    assert recorder.batches == [[7]]


async def test_items_arriving_during_a_batch_go_together_in_the_next_one() -> None:
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder.run, name="test")

    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)  # the first batch is now in flight, holding [1]
    later = [asyncio.create_task(coalescer.submit(item)) for item in (2, 3, 4)]
    await asyncio.sleep(0)
    recorder.release.set()

    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_batches_are_bounded() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer: Coalescer[int, int] = Coalescer(recorder.run, name="test", max_batch=2)

    results = await asyncio.gather(*(coalescer.submit(item) for item in range(5)))

    assert results == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_an_error_reaches_every_caller_of_its_batch_and_later_batches_still_run() -> None:
    recorder = Recorder()
    recorder.fail_on = 2
    coalescer: Coalescer[int, int] = Coalescer(recorder.run, name="test")

    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    failing = [asyncio.create_task(coalescer.submit(item)) for item in (2, 3)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 10
    for task in failing:
        with pytest.raises(ValueError, match="cannot take 2"):
            await task

    assert await coalescer.submit(5) == 50


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder.run, name="test")

    impatient = asyncio.create_task(coalescer.submit(1))
    patient = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()
    recorder.release.set()

    assert await patient == 20
    assert impatient.cancelled()
