"""The federation sender's backoff policy (federation/sender/backoff.py): Synapse's
numbers, jitter bounds, the cap, and which failures count as "down"."""

from __future__ import annotations

from twisted.trial import unittest

from federation.sender.backoff import (
    JITTER,
    MAX_RETRY_INTERVAL_MS,
    MIN_RETRY_INTERVAL_MS,
    BackoffPolicy,
    counts_as_down,
    rate_limited_for_ms,
    retry_due_at,
)


class BackoffPolicyTest(unittest.TestCase):
    def test_first_failure_waits_the_minimum(self) -> None:
        self.assertEqual(BackoffPolicy().next_interval(0), MIN_RETRY_INTERVAL_MS)
        self.assertEqual(MIN_RETRY_INTERVAL_MS, 10 * 60 * 1000)

    def test_doubles_without_jitter(self) -> None:
        policy = BackoffPolicy(uniform=lambda a, b: 1.0)
        seen = [policy.next_interval(0)]
        for _ in range(3):
            seen.append(policy.next_interval(seen[-1]))
        self.assertEqual(seen, [MIN_RETRY_INTERVAL_MS * 2 ** i for i in range(4)])

    def test_jitter_range_is_asked_for(self) -> None:
        asked: list[tuple[float, float]] = []

        def uniform(a: float, b: float) -> float:
            asked.append((a, b))
            return b
        policy = BackoffPolicy(uniform=uniform)
        self.assertEqual(policy.next_interval(1_000_000), int(1_000_000 * 2 * JITTER[1]))
        self.assertEqual(asked, [JITTER])

    def test_real_jitter_stays_in_bounds(self) -> None:
        policy = BackoffPolicy()
        for _ in range(200):
            value = policy.next_interval(MIN_RETRY_INTERVAL_MS)
            self.assertGreaterEqual(value, MIN_RETRY_INTERVAL_MS)
            self.assertLessEqual(value, int(MIN_RETRY_INTERVAL_MS * 2 * JITTER[1]))

    def test_capped_and_never_below_the_minimum(self) -> None:
        policy = BackoffPolicy(uniform=lambda a, b: 1.4)
        self.assertEqual(policy.next_interval(MAX_RETRY_INTERVAL_MS), MAX_RETRY_INTERVAL_MS)
        self.assertEqual(policy.next_interval(MAX_RETRY_INTERVAL_MS - 1), MAX_RETRY_INTERVAL_MS)
        low = BackoffPolicy(uniform=lambda a, b: 0.1)
        self.assertEqual(low.next_interval(1), MIN_RETRY_INTERVAL_MS)
        custom = BackoffPolicy(min_interval_ms=10, max_interval_ms=50,
                               uniform=lambda a, b: 1.0)
        self.assertEqual([custom.next_interval(v) for v in (0, 10, 20, 40)], [10, 20, 40, 50])

    def test_due_time(self) -> None:
        self.assertEqual(retry_due_at(1000, 500), 1500)
        self.assertEqual(retry_due_at(1000, 0), 0)

    def test_which_failures_back_off(self) -> None:
        for status in (None, 500, 502, 503, 401, 404, 408, 429):
            self.assertTrue(counts_as_down(status), status)
        for status in (400, 403, 413):
            self.assertFalse(counts_as_down(status), status)


class RateLimitedTest(unittest.TestCase):
    def test_only_a_bounded_429_delay_is_a_pause(self) -> None:
        self.assertEqual(rate_limited_for_ms(429, {"retry_after_ms": 2000}), 2000)
        self.assertEqual(rate_limited_for_ms(429, {"retry_after_ms": 0}), 100)
        for status, body in ((429, {}), (429, None), (429, {"retry_after_ms": "5"}),
                             (429, {"retry_after_ms": True}), (429, {"retry_after_ms": -1}),
                             (429, {"retry_after_ms": 3600 * 1000 + 1}),
                             (500, {"retry_after_ms": 10})):
            self.assertIsNone(rate_limited_for_ms(status, body), (status, body))
