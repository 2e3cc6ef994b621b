"""Measuring helpers: concurrent closed-loop drivers, percentiles, and Prometheus histogram deltas."""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from amcsearch.runtime.metrics import sample_total, samples


@dataclass
class Run:
    """Latencies (seconds) of `count` requests issued by `concurrency` closed-loop workers."""

    concurrency: int
    latencies: list[float]
    wall_seconds: float

    @property
    def qps(self) -> float:
        return len(self.latencies) / self.wall_seconds

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))


async def closed_loop(call: Callable[[int], Awaitable[object]], count: int, concurrency: int) -> Run:
    """`concurrency` workers take request numbers 0..count-1 in turn; each waits for its reply."""
    numbers = iter(range(count))
    latencies: list[float] = []

    async def worker() -> None:
        for number in numbers:
            start = time.perf_counter()
            await call(number)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(concurrency, latencies, time.perf_counter() - start)


# --- Prometheus text format ------------------------------------------------------------------


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def total(text: str, name: str, **labels: str) -> float:
    return sample_total(text, name, **labels)


@dataclass
class HistogramDelta:
    """The observations of one histogram between two scrapes (summed over other labels)."""

    buckets: list[tuple[float, float]]  # (upper bound, cumulative count)
    count: float
    sum: float

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket, as Prometheus's histogram_quantile does."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(cumulative - lower_count, 1e-12)
            lower_bound, lower_count = bound, cumulative
        return math.nan

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan


def histogram_delta(before: str, after: str, name: str, **labels: str) -> HistogramDelta:
    def buckets(text: str) -> dict[float, float]:
        merged: dict[float, float] = {}
        for key, value in samples(text, f"{name}_bucket", **labels).items():
            bound = float(dict(key)["le"].replace("+Inf", "inf"))
            merged[bound] = merged.get(bound, 0.0) + value
        return merged

    b0, b1 = buckets(before), buckets(after)
    cumulative = sorted((bound, b1[bound] - b0.get(bound, 0.0)) for bound in b1)
    return HistogramDelta(
        cumulative,
        total(after, f"{name}_count", **labels) - total(before, f"{name}_count", **labels),
        total(after, f"{name}_sum", **labels) - total(before, f"{name}_sum", **labels),
    )
