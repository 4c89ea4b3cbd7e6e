"""Timing helpers: raw samples, interleaved rounds (so drift on a shared machine hits every contender alike),
and percentiles. `bench.wire` has the original sequential helpers; these keep the samples."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from bench.wire import LatencyStats, _percentile


def stats(samples_s: Sequence[float]) -> LatencyStats:
    """p50 / p99 / mean in milliseconds of samples in seconds."""
    ordered = sorted(samples_s)
    return LatencyStats(
        len(ordered),
        _percentile(ordered, 0.5) * 1e3,
        _percentile(ordered, 0.99) * 1e3,
        statistics.fmean(ordered) * 1e3,
    )


async def async_samples(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


def sync_samples(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


async def interleaved(
    contenders: Mapping[str, Callable[[], Awaitable[Any]]], n: int, rounds: int, warmup: int = 10
) -> dict[str, list[float]]:
    """`n` timed sequential calls of each contender, taken in `rounds` alternating slices, after `warmup`
    untimed calls each. Returns the samples (seconds) per contender."""
    for call in contenders.values():
        for _ in range(warmup):
            await call()
    out: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for name, call in contenders.items():
            out[name] += await async_samples(call, per_round)
    return out
