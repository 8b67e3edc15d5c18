"""The auth rate limiter (token bucket on the injected clock), the bounded Argon2 pool,
and the ``rate_limits`` config section."""

from __future__ import annotations

import threading

from twisted.internet import defer, task
from twisted.trial import unittest

from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.ratelimit import AuthRateLimiters, TokenBucketRateLimiter
from homeserver.cli import generate_config_text
from homeserver.clock import Clock
from homeserver.config import ConfigError, parse_config
from homeserver.config.model import DEFAULT_RATE_LIMITS, PasswordHashingConfig, RateLimitConfig
from homeserver.http.errors import MatrixError
from tests.harness import make_config


class TokenBucketTest(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor_time = task.Clock()
        self.reactor_time.advance(1_000_000)
        self.clock = Clock(self.reactor_time)

    def test_burst_then_refill(self) -> None:
        bucket = TokenBucketRateLimiter(self.clock, per_second=2, burst=3)
        self.assertEqual([bucket.try_acquire("ip") for _ in range(3)], [0, 0, 0])
        self.assertAlmostEqual(bucket.try_acquire("ip"), 0.5)
        # A refused attempt takes nothing: after the advertised wait, one is admitted.
        self.reactor_time.advance(0.5)
        self.assertEqual(bucket.try_acquire("ip"), 0)
        self.assertGreater(bucket.try_acquire("ip"), 0)
        # Refill never exceeds the burst.
        self.reactor_time.advance(3600)
        self.assertEqual([bucket.try_acquire("ip") for _ in range(3)], [0, 0, 0])
        self.assertGreater(bucket.try_acquire("ip"), 0)

    def test_keys_are_independent(self) -> None:
        bucket = TokenBucketRateLimiter(self.clock, per_second=1, burst=1)
        bucket.check("a")
        bucket.check("b")
        with self.assertRaises(MatrixError):
            bucket.check("a")

    def test_error_is_429_with_retry_after(self) -> None:
        bucket = TokenBucketRateLimiter(self.clock, per_second=0.25, burst=1)
        bucket.check("k")
        with self.assertRaises(MatrixError) as cm:
            bucket.check("k")
        err = cm.exception
        self.assertEqual(err.code, 429)
        self.assertEqual(err.to_json()["errcode"], "M_LIMIT_EXCEEDED")
        self.assertEqual(err.to_json()["retry_after_ms"], 4000)
        self.assertEqual(err.headers["Retry-After"], "4")
        # Sub-second waits still say at least 1 s in the header (it is whole seconds).
        fast = TokenBucketRateLimiter(self.clock, per_second=10, burst=1)
        fast.check("k")
        with self.assertRaises(MatrixError) as cm:
            fast.check("k")
        self.assertEqual(cm.exception.to_json()["retry_after_ms"], 100)
        self.assertEqual(cm.exception.headers["Retry-After"], "1")

    def test_number_of_keys_is_bounded(self) -> None:
        bucket = TokenBucketRateLimiter(self.clock, per_second=1, burst=1, max_keys=2)
        for key in ("a", "b", "c"):
            bucket.check(key)
        self.assertEqual(len(bucket._buckets), 2)  # noqa: SLF001
        bucket.check("a")  # "a" was the least recently used and was evicted

    def test_invalid_parameters(self) -> None:
        for per_second, burst in ((0, 1), (-1, 1), (1, 0)):
            with self.assertRaises(ValueError):
                TokenBucketRateLimiter(self.clock, per_second, burst)

    def test_from_config(self) -> None:
        config, _ = make_config("/tmp", engine="sqlite",
                                rate_limits={"login": {"per_second": 1, "burst": 2}})
        limits = AuthRateLimiters.from_config(self.clock, config.rate_limits)
        limits.login.check("ip")
        limits.login.check("ip")
        with self.assertRaises(MatrixError):
            limits.login.check("ip")


class RateLimitConfigTest(unittest.TestCase):
    def _raw(self, **extra: object) -> dict:
        raw = {"server_name": "rl.test",
               "auth": {"signing_keys": [{"kid": "k", "algorithm": "HS256", "key": "x" * 32}]}}
        raw.update(extra)
        return raw

    def test_defaults_follow_the_product_brief(self) -> None:
        config = parse_config(self._raw())
        # auth <= 5 req/s per IP.
        self.assertEqual(config.rate_limits.login, RateLimitConfig(5, 10))
        self.assertEqual(config.rate_limits.registration, RateLimitConfig(5, 10))
        self.assertEqual(config.rate_limits.uia_password, RateLimitConfig(1, 5))
        self.assertEqual(
            {k: {"per_second": v.per_second, "burst": v.burst}
             for k, v in vars(config.rate_limits).items()},
            DEFAULT_RATE_LIMITS)
        self.assertIsNone(config.password_hashing.max_pending)

    def test_override(self) -> None:
        config = parse_config(self._raw(
            rate_limits={"login": {"per_second": 0.5, "burst": 3}},
            password_hashing={"max_pending": 7}))
        self.assertEqual(config.rate_limits.login, RateLimitConfig(0.5, 3))
        self.assertEqual(config.rate_limits.registration, RateLimitConfig(5, 10))
        self.assertEqual(config.password_hashing.max_pending, 7)

    def test_invalid_values_name_the_key(self) -> None:
        for bad in ({"login": {"per_second": 0, "burst": 1}},
                    {"login": {"per_second": 1, "burst": 0}},
                    {"login": {"per_second": 1}},
                    {"login": {"per_second": "5", "burst": 1}},
                    {"messaging": {"per_second": 1, "burst": 1}}):
            with self.assertRaises(ConfigError) as cm:
                parse_config(self._raw(rate_limits=bad))
            self.assertIn("rate_limits", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            parse_config(self._raw(password_hashing={"max_pending": 0}))
        self.assertIn("password_hashing.max_pending", str(cm.exception))

    def test_dev_config_bursts_fit_a_client_start_up(self) -> None:
        import yaml

        raw = yaml.safe_load(generate_config_text("localhost", "/tmp/x", 8008, dev=True))
        config = parse_config(raw)
        # Several clients signing up (two /register calls each) and logging in at once.
        self.assertGreaterEqual(config.rate_limits.registration.burst, 20)
        self.assertGreaterEqual(config.rate_limits.login.burst, 20)
        self.assertLessEqual(config.rate_limits.login.per_second, 5)
        prod = parse_config(yaml.safe_load(
            generate_config_text("example.org", "/tmp/x", 8008, dev=False)))
        self.assertEqual(prod.rate_limits.login, RateLimitConfig(5, 10))


class PasswordHasherCapTest(unittest.TestCase):
    """Past ``max_pending`` queued or running hashes, a request is refused, not queued."""

    def setUp(self) -> None:
        self.hasher = PasswordHasher(PasswordHashingConfig(
            time_cost=1, memory_cost_kib=8, parallelism=1, max_pending=2))
        self.addCleanup(self.hasher.stop)

    async def test_cap(self) -> None:
        gate = threading.Event()
        held = [defer.ensureDeferred(self.hasher.run(gate.wait)) for _ in range(2)]
        self.assertEqual(self.hasher.pending, 2)
        with self.assertRaises(MatrixError) as cm:
            await self.hasher.hash("some password")
        self.assertEqual(cm.exception.code, 429)
        self.assertEqual(cm.exception.errcode, "M_LIMIT_EXCEEDED")
        with self.assertRaises(MatrixError):
            await self.hasher.verify(None, "some password")
        gate.set()
        await defer.gatherResults(held)
        self.assertEqual(self.hasher.pending, 0)
        # Capacity is back once the pool drains.
        digest = await self.hasher.hash("some password")
        self.assertEqual(await self.hasher.verify(digest, "some password"), (True, False))

    async def test_failed_work_frees_its_slot(self) -> None:
        def boom() -> None:
            raise RuntimeError("boom")

        for _ in range(3):
            with self.assertRaises(RuntimeError):
                await self.hasher.run(boom)
        self.assertEqual(self.hasher.pending, 0)

    def test_default_cap_is_four_per_core(self) -> None:
        import os

        hasher = PasswordHasher(PasswordHashingConfig(time_cost=1, memory_cost_kib=8,
                                                      parallelism=1))
        self.addCleanup(hasher.stop)
        self.assertEqual(hasher.max_pending, 4 * max(1, os.cpu_count() or 1))
