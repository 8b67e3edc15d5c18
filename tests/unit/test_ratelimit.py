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
            {k: {"per_second": config.rate_limits.limit(k).per_second,
                 "burst": config.rate_limits.limit(k).burst} for k in DEFAULT_RATE_LIMITS},
            DEFAULT_RATE_LIMITS)
        # Messaging: 60/min per user with a burst; media counts bytes.
        self.assertEqual(config.rate_limits.message, RateLimitConfig(1, 30))
        self.assertEqual(config.rate_limits.media_upload.burst, 256 * 1024 * 1024)
        self.assertEqual(config.rate_limits.backend, "memory")
        self.assertTrue(config.rate_limits.exempt_admins)
        self.assertIsNone(config.redis)
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


class MemoryBackendTest(unittest.TestCase):
    """The in-process backend the limiter and the Redis fallback use."""

    async def test_costs_and_refill(self) -> None:
        from homeserver.ratelimit.memory import MemoryBackend

        backend = MemoryBackend(max_keys=2)
        self.assertEqual(await backend.acquire("b", 1000, 10_000, 6000, 0), 0)
        self.assertAlmostEqual(await backend.acquire("b", 1000, 10_000, 6000, 0), 2.0)
        # A cost above the burst passes only with a full bucket (never refused forever).
        self.assertEqual(await backend.acquire("big", 1, 5, 50, 0), 0)
        self.assertAlmostEqual(await backend.acquire("big", 1, 5, 50, 1), 4.0)
        await backend.acquire("c", 1, 1, 1, 0)
        self.assertEqual(len(backend), 2)  # bounded: the least recently used went


class PolicyAndPenaltyTest(unittest.TestCase):
    """The ``set_policy`` seam and the invite penalty, with a plain function."""

    def setUp(self) -> None:
        from homeserver.config.model import RateLimitsConfig
        from homeserver.ratelimit.limiter import RateLimiter
        from homeserver.ratelimit.memory import MemoryBackend

        self.reactor_time = task.Clock()
        self.reactor_time.advance(1_000_000)
        self.clock = Clock(self.reactor_time)
        self.admins = {"@root:hs"}

        async def is_admin(user_id: str) -> bool:
            return user_id in self.admins

        self.limiter = RateLimiter(RateLimitsConfig(message=RateLimitConfig(1, 2)), self.clock,
                                   MemoryBackend(), is_admin=is_admin)

    async def admitted(self, user: str, n: int = 10) -> int:
        count = 0
        for _ in range(n):
            try:
                await self.limiter.check("message", user, user_id=user, ip="10.0.0.1")
            except MatrixError:
                break
            count += 1
        return count

    async def test_policy_multiplies_the_limit(self) -> None:
        calls: list[tuple[str, str | None, str]] = []

        def policy(action: str, user_id: str | None, ip: str) -> float | None:
            calls.append((action, user_id, ip))
            return {"@big:hs": 3.0, "@free:hs": 0.0, "@half:hs": 0.5}.get(user_id or "")

        self.limiter.set_policy(policy)
        self.assertEqual(await self.admitted("@big:hs"), 6)
        self.assertEqual(await self.admitted("@free:hs"), 10)
        self.assertEqual(await self.admitted("@half:hs"), 1)  # at least one per refill
        self.assertEqual(await self.admitted("@plain:hs"), 2)
        self.assertIn(("message", "@big:hs", "10.0.0.1"), calls)
        self.limiter.set_policy(None)
        self.assertEqual(await self.admitted("@other:hs"), 2)

    async def test_async_policy_and_garbage(self) -> None:
        async def policy(action: str, user_id: str | None, ip: str) -> float | None:
            return 2.0

        self.limiter.set_policy(policy)
        self.assertEqual(await self.admitted("@a:hs"), 4)
        for garbage in ("lots", -1.0, float("nan"), True):
            self.limiter.set_policy(lambda a, u, i, g=garbage: g)  # type: ignore[misc]
            self.assertEqual(await self.admitted(f"@g{garbage!r}:hs"), 2)

    async def test_admins_exempt_and_extra_exemptions(self) -> None:
        self.assertEqual(await self.admitted("@root:hs"), 10)
        self.limiter.add_exemption(lambda uid: uid.startswith("@bridge_"))
        self.assertEqual(await self.admitted("@bridge_x:hs"), 10)
        self.assertEqual(await self.admitted("@user:hs"), 2)

    def test_invite_penalty_escalates_and_decays(self) -> None:
        penalty = self.limiter.invite_penalty
        self.assertEqual(penalty.multiplier("@s:hs"), 1.0)
        for expected in (2.0, 4.0, 8.0):
            penalty.strike("@s:hs")
            self.assertAlmostEqual(penalty.multiplier("@s:hs"), expected)
        for _ in range(10):
            penalty.strike("@s:hs")
        self.assertEqual(penalty.multiplier("@s:hs"), 64.0)  # capped
        self.reactor_time.advance(3600 * 13)  # 13 strikes halve 13 times: ~1.6 strikes
        self.assertLess(penalty.multiplier("@s:hs"), 4.0)
        self.reactor_time.advance(3600 * 30)
        self.assertAlmostEqual(penalty.multiplier("@s:hs"), 1.0, places=3)


class RedisConfigTest(unittest.TestCase):
    def _raw(self, **extra: object) -> dict:
        raw = {"server_name": "rl.test",
               "auth": {"signing_keys": [{"kid": "k", "algorithm": "HS256", "key": "x" * 32}]}}
        raw.update(extra)
        return raw

    def test_redis_section(self) -> None:
        import os

        os.environ["PARLEY_TEST_REDIS_PW"] = "s3cret"
        self.addCleanup(os.environ.pop, "PARLEY_TEST_REDIS_PW")
        config = parse_config(self._raw(
            rate_limits={"backend": "redis", "exempt_admins": False,
                         "invite_penalty": {"factor": 3, "half_life": "10m"}},
            redis={"host": "redis", "port": 6380, "db": 2,
                   "password": {"env": "PARLEY_TEST_REDIS_PW"}}))
        self.assertEqual(config.rate_limits.backend, "redis")
        self.assertFalse(config.rate_limits.exempt_admins)
        self.assertEqual(config.rate_limits.invite_penalty.factor, 3)
        self.assertEqual(config.rate_limits.invite_penalty.half_life, 600)
        assert config.redis is not None
        self.assertEqual((config.redis.host, config.redis.port, config.redis.db),
                         ("redis", 6380, 2))
        self.assertEqual(config.redis.password, "s3cret")
        self.assertNotIn("s3cret", repr(config.redis))

    def test_redis_backend_needs_the_section(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            parse_config(self._raw(rate_limits={"backend": "redis"}))
        self.assertIn("rate_limits.backend", str(cm.exception))
        for bad in ({"backend": "memcached"}, {"message": {"per_second": 1}}):
            with self.assertRaises(ConfigError):
                parse_config(self._raw(rate_limits=bad))
        with self.assertRaises(ConfigError):
            parse_config(self._raw(redis={"port": 0}))
