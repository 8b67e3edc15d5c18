"""The Redis backend: the same token buckets as :mod:`.memory`, kept in Redis and
updated by one atomic Lua script, so several Parley processes share one budget.

When Redis cannot be reached (connection refused, a command past ``redis.timeout``,
an error reply) the check is answered by the in-process backend instead: limits stay
enforced (per process), never every request failed and never silently opened. The
switch is logged once, shown by the gauge ``parley_rate_limit_backend_fallback`` (1
while falling back) and counted in ``parley_rate_limit_backend_fallbacks_total``.
While falling back, one request per ``retry_interval`` tries Redis again; the first
success switches back (logged once too).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import txredisapi
from prometheus_client import CollectorRegistry, Counter, Gauge

from homeserver.config.model import RedisConfig
from homeserver.metrics.registry import PREFIX
from homeserver.ratelimit.memory import MemoryBackend

logger = logging.getLogger(__name__)

# KEYS[1] the bucket; ARGV rate (tokens/s), burst, cost, now (s). Returns the wait in
# seconds as a string (Lua numbers returned to Redis are truncated to integers; and
# tostring() keeps only 14 digits, too few for a Unix time with sub-millisecond parts).
# The stored time never goes back, so a process whose clock is behind cannot refill.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = math.min(tonumber(ARGV[3]), burst)
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1])
local then_ = tonumber(state[2])
if tokens == nil or then_ == nil then
  tokens = burst
  then_ = now
end
local elapsed = now - then_
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
if now > then_ then then_ = now end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens),
           's', string.format('%.17g', then_))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


class BackendMetrics:
    """The fallback gauge and counter, on the server's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.fallback = Gauge(
            f"{PREFIX}rate_limit_backend_fallback",
            "1 while the Redis rate-limit backend is unreachable and in-process limits apply.",
            registry=registry)
        self.fallbacks = Counter(
            f"{PREFIX}rate_limit_backend_fallbacks",
            "Rate-limit checks answered in-process because Redis could not be reached.",
            registry=registry)


class RedisBackend:
    """Token buckets in Redis (``<key_prefix>rl:<class>:<key>``), falling back to
    ``fallback`` (in-process) while Redis is unreachable."""

    name = "redis"

    def __init__(self, config: RedisConfig, fallback: MemoryBackend, reactor: Any,
                 metrics: BackendMetrics, key_prefix: str = "parley:",
                 retry_interval: float = 5.0) -> None:
        self._reactor = reactor
        self._timeout = config.timeout
        self._fallback = fallback
        self._metrics = metrics
        self.key_prefix = key_prefix
        self._retry_interval = retry_interval
        self.fallback_active = False
        self._retry_at = 0.0
        self._conn = txredisapi.lazyConnection(
            host=config.host, port=config.port, dbid=config.db, password=config.password,
            reconnect=True, connectTimeout=config.timeout, replyTimeout=config.timeout)

    async def acquire(self, bucket: str, rate: float, burst: float, cost: float,
                      now: float) -> float:
        if self.fallback_active and self._reactor.seconds() < self._retry_at:
            return self._fall_back(bucket, rate, burst, cost, now)
        self._retry_at = self._reactor.seconds() + self._retry_interval  # one probe at a time
        try:
            d = self._conn.eval(TOKEN_BUCKET_LUA, [f"{self.key_prefix}rl:{bucket}"],
                                [_num(rate), _num(burst), _num(cost), _num(now)])
            d.addTimeout(self._timeout, self._reactor)
            wait = float(await d)
        except Exception as e:  # noqa: BLE001 (any failure: fall back, never fail open)
            if not self.fallback_active:
                self.fallback_active = True
                self._metrics.fallback.set(1)
                logger.warning("Redis rate-limit backend unreachable (%s); using in-process "
                               "limits until it is back", type(e).__name__)
            return self._fall_back(bucket, rate, burst, cost, now)
        if self.fallback_active:
            self.fallback_active = False
            self._metrics.fallback.set(0)
            logger.warning("Redis rate-limit backend reachable again; limits are shared")
        if not math.isfinite(wait) or wait < 0:
            return 0.0
        return wait

    def _fall_back(self, bucket: str, rate: float, burst: float, cost: float,
                   now: float) -> float:
        self._metrics.fallbacks.inc()
        return self._fallback.acquire_now(bucket, rate, burst, cost, now)

    @property
    def connection(self) -> Any:
        """The Redis connection, shared with the detection lockouts
        (homeserver/detection/shared_state.py)."""
        return self._conn

    async def ping(self) -> None:
        """For ``/ready``: raises unless Redis answers (the caller bounds the wait)."""
        await self._conn.ping()

    async def close(self) -> None:
        try:
            await self._conn.disconnect()
        except Exception:  # noqa: BLE001 (shutting down: nothing to do about it)
            logger.debug("Redis disconnect failed", exc_info=True)


def _num(value: float) -> str:
    return repr(float(value))
