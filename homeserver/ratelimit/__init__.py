"""Rate limiting per action (see homeserver/http/rate_classes.py for which routes use
which class): the limiter, its in-process and Redis backends, and how the server is
wired to them."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.ratelimit.limiter import LimiterBackend, Policy, RateLimiter, SecurityEvents
from homeserver.ratelimit.memory import MemoryBackend
from homeserver.ratelimit.redis_backend import BackendMetrics, RedisBackend

__all__ = ["MemoryBackend", "Policy", "RateLimiter", "RedisBackend", "build_rate_limiter"]


def build_rate_limiter(config: Config, clock: Clock, registry: CollectorRegistry | None,
                       is_admin: Any, events: SecurityEvents | None,
                       reactor: Any = None) -> RateLimiter:
    """The limiter ``rate_limits.backend`` asks for (Redis falls back to memory)."""
    memory = MemoryBackend()
    metrics = BackendMetrics(registry)
    metrics.fallback.set(0)
    backend: LimiterBackend = memory
    if config.rate_limits.backend == "redis":
        if config.redis is None:  # the loader refuses this; a hand-built Config may not
            raise ValueError("rate_limits.backend is redis but there is no redis section")
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        backend = RedisBackend(config.redis, memory, reactor, metrics,
                               key_prefix=config.redis.key_prefix)
    return RateLimiter(config.rate_limits, clock, backend, is_admin=is_admin, events=events)
