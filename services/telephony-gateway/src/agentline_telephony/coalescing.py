"""Coalescing: what concurrent webhooks ask of Redis or the database while one round trip is in
flight goes out together in the next one.

Under load every webhook paid the fixed cost of its own Redis command and its own SQLite transaction
(client bookkeeping, a socket write, hops to aiosqlite's thread on the one connection), and that fixed
cost was most of its time. Batched, it is paid once per round trip. Nothing waits for a batch to
fill: a lone request goes out at once, and only requests that arrive meanwhile are grouped, so no
request is answered later than it would have been, and each still gets its own result (or its
batch's error) before it goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

DEFAULT_MAX_BATCH = 256


class Coalescer(Generic[ItemT, ResultT]):
    """Runs `run` on the items submitted while its previous run was in flight, one result each.

    `run` gets a list of items and returns their results in the same order; when it raises, every
    caller of that batch gets the error.
    """

    def __init__(
        self,
        run: Callable[[list[ItemT]], Awaitable[Sequence[ResultT]]],
        *,
        name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._run = run
        self._name = name
        self._max_batch = max_batch
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def close(self) -> None:
        """Let the batches in progress finish, so no caller is left waiting (at shutdown)."""
        if self._running is not None:
            await asyncio.shield(self._running)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    results = await self._run([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = None
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
