"""Closed-loop load generator: keep up to C operations in flight, time each one.

An *operation* is any coroutine ``op(i) -> status``; it may issue several HTTP requests
(e.g. the two legs of a UIA registration) and is timed as a whole with perf_counter.
Status conventions: the final HTTP status, ``TRANSPORT_ERROR`` for connection errors or
timeouts, ``PROTOCOL_ERROR`` for a 2xx whose body is not what the spec requires.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TRANSPORT_ERROR = 0
PROTOCOL_ERROR = -1

Operation = Callable[[int], Awaitable[int]]


@dataclass(frozen=True)
class Sample:
    latency_s: float
    status: int


@dataclass
class LoadResult:
    requested: int
    concurrency: int
    elapsed_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # scenario-specific figures

    def summary(self) -> dict[str, Any]:
        ok = sorted(s.latency_s for s in self.samples if s.status == 200)
        limited = sum(1 for s in self.samples if s.status == 429)
        errors = sum(1 for s in self.samples if s.status not in (200, 429))
        statuses: dict[str, int] = {}
        for s in self.samples:
            statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
        return {
            "requested": self.requested,
            "concurrency": self.concurrency,
            "completed": len(self.samples),
            "ok": len(ok),
            "errors": errors,
            "rate_limited": limited,
            "not_run": self.requested - len(self.samples),
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 3),
            "ops_per_s": round(len(ok) / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "p50_ms": _ms(percentile(ok, 50)),
            "p95_ms": _ms(percentile(ok, 95)),
            "p99_ms": _ms(percentile(ok, 99)),
            "mean_ms": _ms(sum(ok) / len(ok) if ok else None),
            "statuses": statuses,
            **self.extra,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Linear-interpolated percentile of an already sorted list (None if empty)."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * pct / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


async def run_load(
    op: Operation, count: int, concurrency: int, time_limit_s: float, grace_s: float = 30.0
) -> LoadResult:
    """Run ``op(0..count-1)`` with at most *concurrency* in flight.

    No new operation starts after *time_limit_s*; operations still in flight are given
    *grace_s* more (they also carry their own per-request timeouts) before being cancelled.
    """
    result = LoadResult(requested=count, concurrency=concurrency)
    next_index = 0
    start = time.perf_counter()
    deadline = start + time_limit_s

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                status = await op(i)
            except (TimeoutError, aiohttp.ClientError):
                status = TRANSPORT_ERROR
            result.samples.append(Sample(time.perf_counter() - t0, status))

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, count)))]
    try:
        await asyncio.wait_for(asyncio.gather(*workers), timeout=time_limit_s + grace_s)
    except TimeoutError:
        result.timed_out = True
    result.timed_out = result.timed_out or len(result.samples) < count
    result.elapsed_s = time.perf_counter() - start
    return result
