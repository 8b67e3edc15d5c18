"""Rate limiting for the authentication paths (login, registration, UIA password checks).

Per-route limits (login, registration, messages, invites, media bytes, ...) are declared
in homeserver/http/rate_classes.py and enforced at the dispatch point by
:mod:`homeserver.ratelimit` (in-process or Redis backend, policy seam). What stays here:
:func:`limit_exceeded` (the one 429 every limiter raises) and the in-process token
bucket used inside handlers, e.g. the UIA password stage (per user being
authenticated), timed by the injected :class:`~homeserver.clock.Clock`.

A refused request gets 429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms`` and a
``Retry-After`` header, as the spec and Synapse do.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from homeserver.clock import Clock
from homeserver.config.model import RateLimitConfig, RateLimitsConfig
from homeserver.http.errors import Codes, MatrixError


def limit_exceeded(retry_after_s: float, limit_class: str = "other") -> MatrixError:
    """The 429 a client sees when it must slow down (at least one second in the header:
    ``Retry-After`` is whole seconds). ``limit_class`` names the limit for the
    rejection counter of the dispatch point (never sent to the client)."""
    retry_ms = max(1, math.ceil(retry_after_s * 1000))
    err = MatrixError(
        429, "Too many requests", Codes.LIMIT_EXCEEDED,
        headers={"Retry-After": str(max(1, math.ceil(retry_ms / 1000)))},
        retry_after_ms=retry_ms,
    )
    err.limit_class = limit_class  # type: ignore[attr-defined]
    return err


class RateLimiter(Protocol):
    """Admits or refuses one action for a key."""

    def check(self, key: str) -> None:
        """Count one action for ``key``; raise a 429 :class:`MatrixError` if over the limit."""


class TokenBucketRateLimiter:
    """``burst`` actions at once per key, refilled at ``per_second``.

    Buckets are kept in LRU order and capped at ``max_keys``: an evicted key simply
    starts again with a full bucket, which costs an attacker as much as using a new IP.
    """

    def __init__(
        self, clock: Clock, per_second: float, burst: int, max_keys: int = 100_000,
        name: str = "other",
    ) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
        self._clock = clock
        self.name = name  # the limit class, for metrics
        self._rate = float(per_second)
        self._burst = float(burst)
        self._max_keys = max_keys
        # key -> (tokens left, time they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def from_config(cls, clock: Clock, config: RateLimitConfig,
                    name: str = "other") -> TokenBucketRateLimiter:
        return cls(clock, config.per_second, config.burst, name=name)

    def try_acquire(self, key: str) -> float:
        """Take one token. Returns 0 if admitted, else the seconds until one is available
        (a refused attempt takes nothing, so waiting that long is enough)."""
        now = self._clock.time()
        tokens, then = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - then) * self._rate)
        if tokens >= 1.0:
            self._put(key, tokens - 1.0, now)
            return 0.0
        self._put(key, tokens, now)
        return (1.0 - tokens) / self._rate

    def check(self, key: str) -> None:
        wait = self.try_acquire(key)
        if wait > 0:
            raise limit_exceeded(wait, self.name)

    def _put(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


@dataclass(frozen=True)
class AuthRateLimiters:
    """The limiters of the authentication paths, each keyed as its name says."""

    login: RateLimiter  # POST /login, per client IP
    registration: RateLimiter  # /register (users and guests), availability, token validity; per IP
    uia_password: RateLimiter  # the m.login.password UIA stage, per user being authenticated

    @classmethod
    def from_config(cls, clock: Clock, config: RateLimitsConfig) -> AuthRateLimiters:
        return cls(
            login=TokenBucketRateLimiter.from_config(clock, config.login, "login"),
            registration=TokenBucketRateLimiter.from_config(clock, config.registration,
                                                            "registration"),
            uia_password=TokenBucketRateLimiter.from_config(clock, config.uia_password,
                                                            "uia_password"),
        )
