"""What benchmarks share: percentiles, a record shape, a bounded concurrent load loop, CPU time."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of `samples`, nearest-rank: the ceil(fraction * n)-th smallest.

    (Not `round(fraction * n + 0.5)`: Python rounds halves to even, which made p95 of 20 samples
    their maximum.)
    """
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = math.ceil(fraction * len(ordered) - 1e-9)  # 1e-9: 0.95 * 20 may come out a hair above 19
    return ordered[min(len(ordered), max(1, rank)) - 1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far (Linux).

    CPU per request, unlike wall-clock figures, hardly changes with what else the machine is doing.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record(name: str, value: float, unit: str, *, goal: str = "", met: bool | None = None) -> dict[str, Any]:
    return {"name": name, "value": round(value, 3), "unit": unit, "goal": goal, "met": met}


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency (ms) of one load run."""

    count: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)


async def run_load(call: Callable[[], Awaitable[Any]], *, total: int, concurrency: int) -> LoadResult:
    """Run `call` `total` times from `concurrency` concurrent callers and time each call."""
    latencies: list[float] = []
    remaining = total

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return LoadResult(count=len(latencies), seconds=time.perf_counter() - started, latencies_ms=latencies)
