"""Every rate-limit class at HTTP level, on the in-process backend and on Redis: the
exact 429 body and Retry-After, per-key budgets, invite escalation, media bytes, admin
exemption, the policy seam, one budget shared by two homeservers over Redis, and the
fallback when Redis is unreachable.

Redis tests use the local Redis (``PARLEY_TEST_REDIS_HOST``/``PORT``, default
127.0.0.1:6379), database ``PARLEY_TEST_REDIS_DB`` (default 9) and a key prefix unique
to each test, deleted afterwards; they are skipped, saying so, if Redis is unreachable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import socket
import tempfile
from typing import Any

import txredisapi
from twisted.internet import defer, reactor
from twisted.trial import unittest

from homeserver.app import build_homeserver
from homeserver.config.model import RateLimitConfig
from homeserver.http.rate_classes import rules_for
from tests.harness import (
    HomeserverTestCase,
    Response,
    drop_pg_schema,
    free_port,
    make_config,
)
from tests.rest.room_helpers import CS, RoomTestCase

REDIS_HOST = os.environ.get("PARLEY_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PARLEY_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("PARLEY_TEST_REDIS_DB", "9"))
_redis_state: str | None = None


def require_redis() -> None:
    """Skip (with the reason) when the test Redis does not answer a TCP connect."""
    global _redis_state
    if _redis_state is None:
        try:
            socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2).close()
            _redis_state = ""
        except OSError as e:
            _redis_state = (f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT} ({e}); start "
                            "Redis or set PARLEY_TEST_REDIS_HOST/PORT")
    if _redis_state:
        raise unittest.SkipTest(_redis_state)


def redis_overrides(prefix: str, port: int = REDIS_PORT, timeout: str = "500ms") -> dict:
    return {"redis": {"host": REDIS_HOST, "port": port, "db": REDIS_DB, "timeout": timeout,
                      "key_prefix": prefix},
            "rate_limits": {"backend": "redis"}}


async def delete_prefix(prefix: str) -> None:
    conn = await txredisapi.Connection(REDIS_HOST, REDIS_PORT, dbid=REDIS_DB, reconnect=False)
    try:
        keys = await conn.keys(f"{prefix}*")
        if keys:
            await conn.delete(*keys)
    finally:
        await conn.disconnect()


class LimitedMixin(RoomTestCase):
    """Helpers; the tests are in :class:`RateLimitClassTests`."""

    def set_limit(self, name: str, per_second: float, burst: int) -> None:
        """Change one class at run time (set-up requests ran with the harness limits)."""
        limiter = self.hs.rate_limiter
        assert limiter is not None
        limiter.config = dataclasses.replace(
            limiter.config, **{name: RateLimitConfig(per_second, burst)})

    def assertExactly429(self, resp: Response, retry_after_ms: int) -> None:  # noqa: N802
        self.assertEqual(resp.code, 429, resp)
        self.assertEqual(resp.json, {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests",
                                     "retry_after_ms": retry_after_ms})
        self.assertEqual(resp.header("Retry-After"), str(max(1, math.ceil(retry_after_ms / 1000))))

    def rejections(self, limit: str) -> float:
        value = self.hs.metrics_registry.get_sample_value(
            "parley_rate_limit_rejections_total", {"limit": limit})
        return value or 0.0


class RateLimitClassTests(LimitedMixin):
    """On the in-process backend here; on Redis in :class:`RedisBackendTest`."""

    async def test_message_per_user(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        self.set_limit("message", 1, 2)
        for _ in range(2):
            await self.send_ok(alice, room)
        self.assertExactly429(await self.send(alice, room), 1000)
        # Per user: bob has his own budget; redactions count as messages.
        await self.send_ok(bob, room)
        self.advance(1)
        await self.send_ok(alice, room)
        self.assertEqual(self.rejections("message"), 1)

    async def test_state_per_user(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        self.set_limit("state", 0.5, 1)
        self.assertEqual((await self.put_state(alice, room, "m.room.topic", {"topic": "a"})).code,
                         200)
        self.assertExactly429(await self.put_state(alice, room, "m.room.topic", {"topic": "b"}),
                              2000)
        # Messages are another class.
        await self.send_ok(alice, room)

    async def test_join_per_user(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        rooms = [await self.create_room(alice, preset="public_chat") for _ in range(3)]
        self.set_limit("join", 0.25, 2)
        for room in rooms[:2]:
            self.assertEqual((await self.join(bob, room)).code, 200)
        self.assertExactly429(await self.join(bob, rooms[2]), 4000)
        self.assertExactly429(await self.member(bob, rooms[2], "join"), 4000)

    async def test_invite_per_sender_and_per_invitee(self) -> None:
        alice, carol = await self.user("alice"), await self.user("carol")
        await self.user("bob")
        await self.user("dan")
        rooms = [await self.create_room(alice) for _ in range(2)]
        carol_room = await self.create_room(carol)
        self.set_limit("invite_target", 0.1, 2)
        for room in rooms:
            resp = await self.member(alice, room, "invite", user_id="@bob:test.local")
            self.assertEqual(resp.code, 200, resp)
        # A third invite of bob, from someone else: the invitee's budget is spent.
        self.assertExactly429(
            await self.member(carol, carol_room, "invite", user_id="@bob:test.local"), 10000)
        self.assertEqual(self.rejections("invite_target"), 1)
        # The sender's own class.
        self.set_limit("invite", 1, 1)
        resp = await self.member(carol, carol_room, "invite", user_id="@dan:test.local")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.member(carol, carol_room, "invite", user_id="@alice:test.local")
        self.assertExactly429(resp, 1000)
        self.assertEqual(self.rejections("invite"), 1)

    async def test_media_upload_counts_bytes(self) -> None:
        alice = await self.user("alice")
        self.set_limit("media_upload", 1000, 10_000)  # bytes per second, bytes

        async def upload(size: int) -> Response:
            return await self.request("POST", "/_matrix/media/v3/upload", raw_body=b"x" * size,
                                      token=alice, headers={"Content-Type": "text/plain"})

        self.assertEqual((await upload(6000)).code, 200)
        # 4000 bytes left: 6000 more need two seconds.
        self.assertExactly429(await upload(6000), 2000)
        self.assertEqual((await upload(3000)).code, 200)  # a small file still fits
        self.advance(5)
        self.assertEqual((await upload(6000)).code, 200)
        self.assertEqual(self.rejections("media_upload"), 1)

    async def test_key_claim_and_to_device(self) -> None:
        alice = await self.user("alice")
        self.set_limit("key_claim", 0.5, 2)
        self.set_limit("to_device", 2, 2)
        for _ in range(2):
            resp = await self.request("POST", f"{CS}/keys/claim", {"one_time_keys": {}},
                                      token=alice)
            self.assertEqual(resp.code, 200, resp)
        self.assertExactly429(
            await self.request("POST", f"{CS}/keys/claim", {"one_time_keys": {}}, token=alice),
            2000)
        for i in range(2):
            resp = await self.request("PUT", f"{CS}/sendToDevice/m.test/t{i}", {"messages": {}},
                                      token=alice)
            self.assertEqual(resp.code, 200, resp)
        self.assertExactly429(await self.request(
            "PUT", f"{CS}/sendToDevice/m.test/t9", {"messages": {}}, token=alice), 500)

    async def test_login_per_ip_and_per_account(self) -> None:
        await self.user("alice")
        self.set_limit("login_account", 0.1, 2)
        for _ in range(2):
            self.assertMatrixError(await self.login("alice", "wrong-password"), 403, "M_FORBIDDEN")
        # The same account however it is spelled; another account is not affected.
        self.assertExactly429(await self.login("@Alice:test.local", "wrong-password"), 10000)
        self.assertMatrixError(await self.login("bob", "wrong-password"), 403, "M_FORBIDDEN")
        self.set_limit("login", 1, 1)
        self.advance(2)
        self.assertMatrixError(await self.login("carl", "wrong-password"), 403, "M_FORBIDDEN")
        self.assertExactly429(await self.login("dora", "wrong-password"), 1000)
        self.assertEqual(self.rejections("login"), 1)
        self.assertEqual(self.rejections("login_account"), 1)

    async def test_registration_and_availability_per_ip(self) -> None:
        self.set_limit("registration", 0.2, 2)
        for name in ("a1", "a2"):
            resp = await self.request("GET", f"{CS}/register/available?username={name}")
            self.assertEqual(resp.code, 200, resp)
        self.assertExactly429(await self.request("GET", f"{CS}/register/available?username=x"),
                              5000)
        self.assertExactly429(await self.request("POST", f"{CS}/register", {"username": "x"}),
                              5000)

    async def test_general_api_limit_per_ip(self) -> None:
        token = await self.user("alice")
        self.set_limit("api", 2, 3)
        for _ in range(3):
            self.assertEqual((await self.request("GET", "/_matrix/client/versions")).code, 200)
        self.assertExactly429(await self.request("GET", f"{CS}/account/whoami", token=token), 500)
        # Probes are exempt.
        self.assertEqual((await self.request("GET", "/health")).code, 200)
        self.assertEqual(self.rejections("api"), 1)

    async def test_admins_are_exempt(self) -> None:
        admin, alice = await self.user("root"), await self.user("alice")
        await self.hs.stores.users.set_admin("@root:test.local", True)
        room = await self.create_room(admin, preset="public_chat")
        self.assertEqual((await self.join(alice, room)).code, 200)
        self.set_limit("message", 0.1, 1)
        for _ in range(5):
            await self.send_ok(admin, room)
        await self.send_ok(alice, room)
        self.assertEqual((await self.send(alice, room)).code, 429)

    async def test_admin_exemption_can_be_turned_off(self) -> None:
        admin = await self.user("root")
        await self.hs.stores.users.set_admin("@root:test.local", True)
        room = await self.create_room(admin)
        limiter = self.hs.rate_limiter
        assert limiter is not None
        limiter.config = dataclasses.replace(limiter.config, exempt_admins=False,
                                             message=RateLimitConfig(0.1, 1))
        await self.send_ok(admin, room)
        self.assertEqual((await self.send(admin, room)).code, 429)

    async def test_policy_seam(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        self.set_limit("message", 1, 2)
        seen: list[tuple[str, str | None, str]] = []

        def policy(action: str, user_id: str | None, ip: str) -> float | None:
            seen.append((action, user_id, ip))
            if action != "message":
                return None
            return {"@alice:test.local": 0.0, "@bob:test.local": 2.0}.get(user_id or "")

        assert self.hs.rate_limiter is not None
        self.hs.rate_limiter.set_policy(policy)
        for _ in range(6):  # 0: exempt
            await self.send_ok(alice, room)
        for _ in range(4):  # 2: twice the burst
            await self.send_ok(bob, room)
        self.assertExactly429(await self.send(bob, room), 500)  # and twice the rate
        self.assertIn(("message", "@bob:test.local", "127.0.0.1"), seen)
        self.assertIn(("api", None, "127.0.0.1"), seen)

        def broken(action: str, user_id: str | None, ip: str) -> float | None:
            raise RuntimeError("plugin bug")

        self.hs.rate_limiter.set_policy(broken)  # fails to the configured limit, not open
        self.advance(10)
        await self.send_ok(alice, room)
        await self.send_ok(alice, room)
        self.assertEqual((await self.send(alice, room)).code, 429)

    async def test_security_event_once_per_window_per_key(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        self.set_limit("message", 0.001, 1)
        await self.send_ok(alice, room)
        for _ in range(3):
            self.assertEqual((await self.send(alice, room)).code, 429)
        events = await self.hs.stores.security_events.list_events(event_type="rate_limited")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].user_id, "@alice:test.local")
        self.assertEqual(events[0].outcome, "blocked")
        self.assertEqual(events[0].reason, "message")
        self.advance(61)
        self.assertEqual((await self.send(alice, room)).code, 429)
        events = await self.hs.stores.security_events.list_events(event_type="rate_limited")
        self.assertEqual(len(events), 2)


class InviteEscalationTests(LimitedMixin):
    async def test_rejected_invites_escalate_and_decay(self) -> None:
        alice = await self.user("alice")
        invitees = {n: await self.user(n) for n in ("bob", "carol", "dan", "erin")}
        room = await self.create_room(alice)
        self.set_limit("invite", 1, 8)

        async def invite(name: str) -> Response:
            return await self.member(alice, room, "invite", user_id=f"@{name}:test.local")

        self.assertEqual((await invite("bob")).code, 200)
        self.assertEqual((await self.member(invitees["bob"], room, "leave")).code, 200)  # rejects
        self.advance(100)  # a full bucket again: 8
        self.assertEqual((await invite("carol")).code, 200)  # costs 2 now: 6 left
        self.assertEqual((await self.member(invitees["carol"], room, "leave")).code, 200)
        self.assertEqual((await invite("dan")).code, 200)  # costs ~4: ~2 left
        resp = await invite("erin")
        self.assertEqual(resp.code, 429, resp)
        self.assertGreater(resp.json["retry_after_ms"], 1500)  # without strikes: admitted
        # Strikes halve every hour: after a day the sender is back to normal.
        self.advance(24 * 3600)
        self.assertEqual((await invite("erin")).code, 200)
        assert self.hs.rate_limiter is not None
        self.assertAlmostEqual(self.hs.rate_limiter.invite_penalty.multiplier(
            "@alice:test.local"), 1.0, places=3)

    async def test_refused_invite_is_a_strike(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(bob)  # alice is not in it
        resp = await self.member(alice, room, "invite", user_id="@bob:test.local")
        self.assertEqual(resp.code, 403, resp)
        assert self.hs.rate_limiter is not None
        self.assertAlmostEqual(self.hs.rate_limiter.invite_penalty.multiplier(
            "@alice:test.local"), 2.0, places=3)


class RouteTableTest(HomeserverTestCase):
    def test_every_route_is_declared(self) -> None:
        missing = [f"{r.method} {r.template}" for r in self.hs.router.routes
                   if not rules_for(r.method, r.template).declared]
        self.assertEqual(missing, [], "declare these routes in homeserver/http/rate_classes.py")

    def test_limited_routes(self) -> None:
        def classes(method: str, template: str) -> set[str]:
            return {r.limit for r in rules_for(method, template).rules}

        send = "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
        self.assertEqual(classes("PUT", send), {"api", "message"})
        self.assertEqual(classes("PUT", send.replace("v3", "r0")), {"api", "message"})
        self.assertEqual(classes("POST", "/_matrix/client/v3/rooms/{roomId}/invite"),
                         {"api", "invite", "invite_target"})
        self.assertEqual(classes("POST", "/_matrix/media/v3/upload"), {"api", "media_upload"})
        self.assertTrue(rules_for("GET", "/health").exempt)


class RedisTestMixin(LimitedMixin):
    async def setUp(self) -> None:  # type: ignore[override]
        require_redis()
        self.prefix = f"parley-test-{secrets.token_hex(6)}:"
        await super().setUp()
        self.assertEqual(self.hs.rate_limiter.backend.name, "redis")  # type: ignore[union-attr]

    async def tearDown(self) -> None:  # type: ignore[override]
        await super().tearDown()
        await delete_prefix(self.prefix)

    def config_overrides(self) -> dict[str, Any]:
        return redis_overrides(self.prefix)


class RedisBackendTest(RedisTestMixin, RateLimitClassTests):
    async def test_budget_lives_in_redis(self) -> None:
        self.set_limit("registration", 0.2, 1)
        self.assertEqual((await self.request("GET", f"{CS}/register/available?username=a")).code,
                         200)
        conn = await txredisapi.Connection(REDIS_HOST, REDIS_PORT, dbid=REDIS_DB,
                                           reconnect=False)
        try:
            keys = await conn.keys(f"{self.prefix}*")
        finally:
            await conn.disconnect()
        self.assertIn(f"{self.prefix}rl:registration:127.0.0.1", keys)
        gauge = self.hs.metrics_registry.get_sample_value("parley_rate_limit_backend_fallback")
        self.assertEqual(gauge, 0)


class RedisSharedBudgetTest(RedisTestMixin):
    async def test_two_homeservers_share_one_budget(self) -> None:
        data_dir = tempfile.mkdtemp(prefix="parley-test-2-")
        config, schema = make_config(data_dir, self.config.database.engine,
                                     **redis_overrides(self.prefix))
        if schema:
            self.addCleanup(drop_pg_schema, schema)
        other = await build_homeserver(config, clock=self.clock)
        port = other.listen(reactor)[0].getHost().port
        self.addCleanup(lambda: defer.ensureDeferred(other.stop()))
        for hs in (self.hs, other):
            assert hs.rate_limiter is not None
            hs.rate_limiter.config = dataclasses.replace(
                hs.rate_limiter.config, registration=RateLimitConfig(0.1, 3))
        here, there = self.base_url, f"http://127.0.0.1:{port}"

        async def available(base: str) -> Response:
            self.base_url = base
            try:
                return await self.request("GET", f"{CS}/register/available?username=a")
            finally:
                self.base_url = here

        self.assertEqual((await available(here)).code, 200)
        self.assertEqual((await available(there)).code, 200)
        self.assertEqual((await available(here)).code, 200)
        # Three in all: both servers now refuse.
        self.assertExactly429(await available(there), 10000)
        self.assertEqual((await available(here)).code, 429)


class RedisFallbackTest(LimitedMixin):
    def config_overrides(self) -> dict[str, Any]:
        return redis_overrides("parley-test-down:", port=free_port(), timeout="200ms")

    async def test_unreachable_redis_falls_back_to_in_process_limits(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        gauge = self.hs.metrics_registry.get_sample_value
        self.assertEqual(gauge("parley_rate_limit_backend_fallback"), 1)
        self.assertGreater(gauge("parley_rate_limit_backend_fallbacks_total") or 0, 0)
        # Requests are served and still limited (in-process), never failed or open.
        self.set_limit("message", 1, 2)
        await self.send_ok(alice, room)
        await self.send_ok(alice, room)
        self.assertExactly429(await self.send(alice, room), 1000)
