"""How long to wait before trying a destination again (pure; Synapse's retryutils).

Synapse's defaults: the first failure waits 10 minutes, each further failure
multiplies the wait by 2 (with jitter of ×0.8–1.4 so a fleet of servers does not retry
in step), capped at a week; a success clears it. We keep those numbers: a server that
comes back is retried sooner anyway, as soon as it sends us a transaction (the inbound
/send wakes its queue) or an admin asks (``reset_connection``).

Which failures count: no connection, a timeout, a 5xx, and 401, 404 and 429 (Synapse
backs off on a 404 for transactions: a server with no federation API). Other 4xx
answers are the remote refusing this transaction, not being down: no backoff. A 429
that says when to come back (``retry_after_ms``, up to an hour) is not a failure either:
the transaction is retried then.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

MIN_RETRY_INTERVAL_MS = 10 * 60 * 1000
RETRY_MULTIPLIER = 2.0
MAX_RETRY_INTERVAL_MS = 7 * 24 * 3600 * 1000
JITTER = (0.8, 1.4)
BACKOFF_STATUSES = frozenset({401, 404, 408, 429})
MAX_RATE_LIMIT_PAUSE_MS = 3600 * 1000


@dataclass(frozen=True)
class BackoffPolicy:
    min_interval_ms: int = MIN_RETRY_INTERVAL_MS
    multiplier: float = RETRY_MULTIPLIER
    max_interval_ms: int = MAX_RETRY_INTERVAL_MS
    # uniform(a, b) -> float; injectable so tests know the exact intervals.
    uniform: Callable[[float, float], float] = random.uniform

    def next_interval(self, current_ms: int) -> int:
        """The wait after one more failure, given the current wait (0: none yet)."""
        if current_ms <= 0:
            return self.min_interval_ms
        grown = int(current_ms * self.multiplier * self.uniform(*JITTER))
        return max(self.min_interval_ms, min(grown, self.max_interval_ms))


def retry_due_at(retry_last_ts: int, retry_interval_ms: int) -> int:
    """When the destination may be tried again (ms since the epoch)."""
    return retry_last_ts + retry_interval_ms if retry_interval_ms > 0 else 0


def counts_as_down(status: int | None) -> bool:
    """Whether a failed send should back off (None: no answer at all)."""
    return status is None or status >= 500 or status in BACKOFF_STATUSES


def rate_limited_for_ms(status: int | None, body: object) -> int | None:
    """How long a 429 asks us to wait (at least 100 ms), or None for any other answer or
    a 429 without a usable ``retry_after_ms`` (that one backs off as a failure)."""
    if status != 429 or not isinstance(body, dict):
        return None
    wait = body.get("retry_after_ms")
    if isinstance(wait, bool) or not isinstance(wait, int) or not 0 <= wait <= MAX_RATE_LIMIT_PAUSE_MS:
        return None
    return max(wait, 100)
