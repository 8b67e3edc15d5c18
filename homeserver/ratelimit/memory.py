"""The in-process backend: one token bucket per (class, key) in this process's memory.

The default backend, and the one the Redis backend falls back to when Redis cannot be
reached. Buckets are kept in LRU order and capped: an evicted key starts again with a
full bucket, which costs an attacker as much as using a new IP address.
"""

from __future__ import annotations

from collections import OrderedDict


def refill(tokens: float, then: float, now: float, rate: float, burst: float) -> float:
    """Tokens in a bucket last counted at ``then`` holding ``tokens``, at ``now``."""
    return min(burst, tokens + max(0.0, now - then) * rate)


class MemoryBackend:
    """Token buckets keyed by ``bucket`` (``"<class>:<key>"``); O(1) per check."""

    name = "memory"

    def __init__(self, max_keys: int = 200_000) -> None:
        self._max_keys = max_keys
        # bucket -> (tokens left, time they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def acquire(self, bucket: str, rate: float, burst: float, cost: float,
                      now: float) -> float:
        return self.acquire_now(bucket, rate, burst, cost, now)

    def acquire_now(self, bucket: str, rate: float, burst: float, cost: float,
                    now: float) -> float:
        """Take ``cost`` tokens. Returns 0 if admitted, else the seconds until they are
        available (a refused attempt takes nothing, so waiting that long is enough)."""
        cost = min(cost, burst)  # a cost above the burst passes only with a full bucket
        tokens, then = self._buckets.get(bucket, (burst, now))
        tokens = refill(tokens, then, now, rate, burst)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / rate
        self._buckets[bucket] = (tokens, max(now, then))
        self._buckets.move_to_end(bucket)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

    async def close(self) -> None:
        return None
