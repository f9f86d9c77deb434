"""Benchmark percentiles: nearest-rank, so a reported p95 is one of the samples and never the
maximum of twenty."""

from __future__ import annotations

import math

from agentline_common.testing.bench import percentile


def test_p95_of_twenty_is_the_nineteenth_not_the_maximum() -> None:
    samples = [float(n) for n in range(1, 21)]
    assert percentile(samples, 0.95) == 19.0
    assert percentile(samples, 0.5) == 10.0


def test_nearest_rank_at_the_edges() -> None:
    samples = [3.0, 1.0, 2.0]
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 1.0) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([float(n) for n in range(1, 1001)], 0.999) == 999.0
    assert math.isnan(percentile([], 0.5))
