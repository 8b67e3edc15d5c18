"""The attack detectors: login lockouts (exact 429s, growing backoff, expiry on the
clock, reset by a later success), password spraying, refresh-token reuse, new
IP / new device logins, message and invite floods, repeated policy rejections; each
alert as an audit entry with a severity, a metric, a recorder sink call and, where the
user should know, a server notice. With Redis (the real one at 127.0.0.1:6379, skipped
when absent), two servers share the login, spraying and MFA lockouts; with Redis down
the in-process state answers."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from homeserver.app import build_homeserver
from homeserver.detection.detectors import LOCKOUT_MESSAGE
from storage.stores.security_events import SecurityEvent
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase
from tests.rest.test_mfa import TOTP, MfaTestCase

ALICE = "@alice:test.local"


class DetectionTestCase(RoomTestCase):
    async def tearDown(self) -> None:  # type: ignore[override]
        await self.settle()  # alert work in flight finishes before the database closes
        await super().tearDown()

    async def settle(self) -> None:
        assert self.hs.detection is not None
        await self.hs.detection.alerts.drain()

    async def alerts(self, detector: str | None = None) -> list[SecurityEvent]:
        await self.settle()
        events = await self.hs.stores.security_events.list_events(event_type="alert")
        return [e for e in reversed(events)
                if detector is None or (e.details or {}).get("detector") == detector]

    def alert_count(self, detector: str, severity: str) -> float:
        value = self.hs.metrics_registry.get_sample_value(
            "parley_security_alerts_total", {"detector": detector, "severity": severity})
        return value or 0.0

    async def notices(self, token: str) -> list[str]:
        """Bodies of the server notices in the user's notices room (via /sync)."""
        await self.settle()
        sync = await self.sync(token)
        out = []
        for room in sync["rooms"].get("join", {}).values():
            tags = [e for e in room.get("account_data", {}).get("events", [])
                    if e["type"] == "m.tag" and "m.server_notice" in e["content"]["tags"]]
            if tags:
                found = [e["content"] for e in room["timeline"]["events"]
                         if e["type"] == "m.room.message"
                         and e["content"].get("msgtype") == "m.server_notice"]
                for content in found:  # the spec's schema requires server_notice_type
                    self.assertEqual(content["server_notice_type"], "org.parley.security_alert")
                out += [c["body"] for c in found]
        return out

    async def bad_login(self, user: str = "alice", **kw: Any) -> Any:
        return await self.login(user, "wrong-password-123", **kw)


class LoginLockoutTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {
            "login_failures": {"per_account": {"max_failures": 3, "window": "10m"},
                               "per_ip": {"max_failures": 100}, "lockout": "60s",
                               "multiplier": 2, "max_lockout": "150s"},
            "password_spraying": {"enabled": False}}}

    def assertLocked(self, resp: Any, retry_ms: int) -> None:  # noqa: N802
        self.assertEqual(resp.code, 429, resp)
        self.assertEqual(resp.json, {"errcode": "M_LIMIT_EXCEEDED", "error": LOCKOUT_MESSAGE,
                                     "retry_after_ms": retry_ms})
        self.assertEqual(resp.header("Retry-After"), str(retry_ms // 1000))

    async def test_lockout_backoff_expiry_and_reset(self) -> None:
        token = await self.user("alice")
        for _ in range(3):
            self.assertMatrixError(await self.bad_login(), 403, "M_FORBIDDEN")
        hashes = self.count_password_hashes()
        # Locked: even the right password is refused, before any hashing.
        self.assertLocked(await self.login("alice"), 60_000)
        self.assertEqual(hashes, [])
        self.advance(30)
        self.assertLocked(await self.bad_login(), 30_000)
        self.assertEqual(hashes, [])
        # Another account from the same IP is not locked.
        await self.user("bob")
        self.assertEqual((await self.login("bob")).code, 200)
        # Expiry on the clock, then three more failures: the backoff doubles...
        self.advance(30)
        for _ in range(3):
            self.assertMatrixError(await self.bad_login(), 403, "M_FORBIDDEN")
        self.assertLocked(await self.login("alice"), 120_000)
        # ... and is capped at max_lockout.
        self.advance(120)
        for _ in range(3):
            await self.bad_login()
        self.assertLocked(await self.login("alice"), 150_000)
        # A successful login after expiry resets the account: back to the first step.
        self.advance(150)
        self.assertEqual((await self.login("alice")).code, 200)
        for _ in range(3):
            await self.bad_login()
        self.assertLocked(await self.login("alice"), 60_000)
        # Each lockout: an alert (audit entry with severity, metric) and a notice.
        alerts = await self.alerts("login_failures")
        self.assertEqual(len(alerts), 4)
        self.assertEqual(alerts[0].user_id, ALICE)
        self.assertEqual(alerts[0].details["severity"], "warning")
        self.assertEqual(alerts[0].details["scope"], "account")
        self.assertEqual(alerts[0].action, "alert.login_failures")
        self.assertEqual(self.alert_count("login_failures", "warning"), 4)
        notices = [n for n in await self.notices(token) if "paused" in n]
        self.assertEqual(len(notices), 4, notices)
        self.assertIn("paused for 1 minute after 3 failed attempts", notices[0])
        self.assertIn("paused for 2 minutes after", notices[1])
        self.assertIn("paused for 2 minutes 30 seconds after", notices[2])
        self.assertNotIn("127.0.0.1", " ".join(notices))

    async def test_unknown_accounts_lock_the_same_way(self) -> None:
        for _ in range(3):
            self.assertMatrixError(await self.bad_login("ghost"), 403, "M_FORBIDDEN")
        self.assertLocked(await self.bad_login("ghost"), 60_000)

    async def test_uia_password_failures_count(self) -> None:
        token = await self.user("alice")
        body: dict[str, Any] = {}
        for _ in range(3):
            first = await self.request("POST", f"{CS}/delete_devices", {"devices": []},
                                       token=token)
            session = (first.json or {}).get("session")
            body = {"devices": ["X"], "auth": {
                "type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "wrong-password-123"}}
            await self.request("POST", f"{CS}/delete_devices", body, token=token)
        self.assertLocked(await self.login("alice"), 60_000)


class IpLockoutAndSprayingTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {
            "login_failures": {"per_account": {"max_failures": 50},
                               "per_ip": {"max_failures": 50}, "lockout": "60s"},
            "password_spraying": {"distinct_accounts": 4, "window": "10m"}}}

    async def test_spraying_alert_locks_the_ip(self) -> None:
        await self.user("alice")
        for name in ("u1", "u2", "u3"):
            self.assertMatrixError(await self.bad_login(name), 403, "M_FORBIDDEN")
        self.assertEqual(await self.alerts("password_spraying"), [])
        self.assertMatrixError(await self.bad_login("u4"), 403, "M_FORBIDDEN")
        alerts = await self.alerts("password_spraying")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].details["severity"], "high")
        self.assertEqual(alerts[0].details["distinct_accounts"], 4)
        self.assertEqual(self.alert_count("password_spraying", "high"), 1)
        # The IP is locked out for every account.
        resp = await self.login("alice")
        self.assertEqual(resp.code, 429, resp)
        self.assertEqual(resp.json["retry_after_ms"], 60_000)
        self.advance(60)
        self.assertEqual((await self.login("alice")).code, 200)


class IpLockoutTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {
            "login_failures": {"per_account": {"max_failures": 50},
                               "per_ip": {"max_failures": 3}, "lockout": "90s"},
            "password_spraying": {"enabled": False}}}

    async def test_per_ip_lockout(self) -> None:
        await self.user("alice")
        for name in ("alice", "u2", "u3"):
            await self.bad_login(name)
        resp = await self.login("alice")
        self.assertEqual(resp.code, 429, resp)
        self.assertEqual(resp.json, {"errcode": "M_LIMIT_EXCEEDED", "error": LOCKOUT_MESSAGE,
                                     "retry_after_ms": 90_000})
        alerts = await self.alerts("login_failures")
        self.assertEqual([a.details["scope"] for a in alerts], ["ip"])
        self.assertIsNone(alerts[0].user_id)


class RefreshReuseTest(DetectionTestCase):
    async def test_reuse_alerts_and_notifies(self) -> None:
        await self.user("alice")
        login = await self.login("alice", refresh_token=True,
                                 initial_device_display_name="Alice's laptop")
        self.assertEqual(login.code, 200, login)
        old = login.json["refresh_token"]
        first = await self.request("POST", f"{CS}/refresh", {"refresh_token": old})
        self.assertEqual(first.code, 200, first)
        again = await self.request("POST", f"{CS}/refresh", {"refresh_token": old})
        self.assertMatrixError(again, 401, "M_UNKNOWN_TOKEN")
        alerts = await self.alerts("refresh_token_reuse")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].user_id, ALICE)
        self.assertEqual(alerts[0].details["severity"], "high")
        self.assertNotIn(old, repr(alerts[0]))
        # The user learns it in the notices room (from another session).
        token = (await self.login("alice")).json["access_token"]
        notices = await self.notices(token)
        reuse = [n for n in notices if "used twice" in n]
        self.assertEqual(len(reuse), 1, notices)
        self.assertIn("Alice's laptop", reuse[0])
        self.assertIn(login.json["device_id"], reuse[0])
        self.assertNotIn(old, reuse[0])


class NewLoginTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"listeners": [{"port": 0, "bind_addresses": ["127.0.0.1"],
                               "x_forwarded": True}]}

    async def test_new_device_and_new_ip(self) -> None:
        token = await self.user("alice")  # registration: learnt, no alert
        self.assertEqual(await self.alerts("new_login"), [])
        resp = await self.login("alice", device_id="PHONE",
                                initial_device_display_name="Alice's phone")
        self.assertEqual(resp.code, 200, resp)
        alerts = await self.alerts("new_login")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].details["severity"], "info")
        self.assertEqual(alerts[0].details["new_device"], True)
        self.assertEqual(alerts[0].details["new_ip"], False)
        # The same device from the same IP again: nothing new.
        self.assertEqual((await self.login("alice", device_id="PHONE")).code, 200)
        self.assertEqual(len(await self.alerts("new_login")), 1)
        # The same device from a new IP: a warning naming that login's IP.
        resp = await self.login("alice", device_id="PHONE",
                                headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(resp.code, 200, resp)
        alerts = await self.alerts("new_login")
        self.assertEqual(len(alerts), 2)
        self.assertEqual(alerts[1].details["severity"], "warning")
        self.assertEqual(self.alert_count("new_login", "warning"), 1)
        self.assertEqual(self.alert_count("new_login", "info"), 1)
        notices = await self.notices(token)
        self.assertEqual(len(notices), 2, notices)
        self.assertIn("\u201cAlice's phone\u201d (PHONE)", notices[0])
        self.assertIn("127.0.0.1", notices[0])
        self.assertIn("203.0.113.9", notices[1])
        # The login history holds hashes, never the address.
        rows = await self.hs.db.query("t", "SELECT value_hash FROM known_logins")
        self.assertTrue(rows)
        self.assertNotIn("203.0.113.9", repr(rows))

    async def login(self, user: str, password: str = TEST_PASSWORD,
                    headers: dict[str, str] | None = None, **extra: Any) -> Any:
        return await self.request("POST", f"{CS}/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra}, headers=headers)


class NewLoginQuietTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {"new_login": {"notify": False}}}

    async def test_alert_without_notice(self) -> None:
        token = await self.user("alice")
        self.assertEqual((await self.login("alice")).code, 200)
        self.assertEqual(len(await self.alerts("new_login")), 1)
        self.assertEqual(await self.notices(token), [])


class FloodTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {"message_flood": {"max_events": 5, "window": "60s"},
                              "invite_flood": {"max_events": 3, "window": "10m"}}}

    async def test_message_flood(self) -> None:
        token = await self.user("alice")
        room = await self.create_room(token)
        for i in range(4):
            await self.send_ok(token, room, f"m{i}")
        self.assertEqual(await self.alerts("message_flood"), [])
        self.advance(61)  # outside the window: the count starts again
        for i in range(4):
            await self.send_ok(token, room, f"n{i}")
        self.assertEqual(await self.alerts("message_flood"), [])
        await self.send_ok(token, room, "n4")
        alerts = await self.alerts("message_flood")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].user_id, ALICE)
        self.assertEqual(alerts[0].details["count"], 5)
        self.assertEqual(self.alert_count("message_flood", "warning"), 1)

    async def test_invite_flood(self) -> None:
        token = await self.user("alice")
        room = await self.create_room(token)
        for name in ("b1", "b2", "b3"):
            await self.user(name)
            resp = await self.member(token, room, "invite", user_id=f"@{name}:test.local")
            self.assertEqual(resp.code, 200, resp)
        alerts = await self.alerts("invite_flood")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].user_id, ALICE)
        self.assertEqual(await self.alerts("message_flood"), [])


class PolicyRejectionTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"e2ee": {"policy": "everywhere"},
                "detection": {"policy_rejections": {"max_events": 3, "window": "10m"}}}

    async def test_repeated_rejections(self) -> None:
        token = await self.user("alice")
        room = await self.create_room(token)
        for i in range(2):
            resp = await self.send(token, room, f"plain {i}")
            self.assertMatrixError(resp, 400, "M_FORBIDDEN")
        rejections = await self.hs.stores.security_events.list_events(
            event_type="policy_rejection")
        self.assertEqual(len(rejections), 2)
        self.assertEqual(rejections[0].user_id, ALICE)
        self.assertEqual(rejections[0].reason, "e2ee_only")
        self.assertNotIn("plain", repr(rejections))  # never the content
        self.assertEqual(await self.alerts("policy_rejections"), [])
        await self.send(token, room, "plain 3")
        alerts = await self.alerts("policy_rejections")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].user_id, ALICE)


class AlertSinkTest(DetectionTestCase):
    """Alerts reach the recorder's sinks (the plugins' on_security_event among them)."""

    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {"login_failures": {"per_account": {"max_failures": 1}}}}

    async def test_sinks_see_alerts(self) -> None:
        seen: list[SecurityEvent] = []
        assert self.hs.detection is not None
        self.hs.detection.alerts.recorder.add_sink(seen.append)
        await self.bad_login("ghost")
        await self.settle()
        kinds = [(e.event_type, (e.details or {}).get("detector")) for e in seen]
        self.assertIn(("alert", "login_failures"), kinds)


class DetectionDisabledTest(DetectionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"detection": {"enabled": False}}

    async def test_nothing_locks(self) -> None:
        for _ in range(8):
            self.assertMatrixError(await self.bad_login("ghost"), 403, "M_FORBIDDEN")
        self.assertEqual(await self.alerts(), [])



def _redis_unreachable() -> str | None:
    """Why the real Redis at 127.0.0.1:6379 cannot be used (None: it answers PING)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return None
            return "Redis at 127.0.0.1:6379 did not answer PING"
    except OSError as e:
        return f"Redis not reachable at 127.0.0.1:6379 ({e}); start redis-server to run this"


class SharedLockoutRedisTest(MfaTestCase):
    """Two homeservers (two processes' worth of handlers) on one database and the real
    Redis: a lockout started through one is enforced by the other."""

    def config_overrides(self) -> dict[str, Any]:
        import secrets

        self.prefix = f"parley-test-{secrets.token_hex(6)}:"
        return {"redis": {"host": "127.0.0.1", "port": 6379, "key_prefix": self.prefix,
                          "timeout": "2s"},
                "detection": {
                    "login_failures": {"per_account": {"max_failures": 3, "window": "10m"},
                                       "per_ip": {"max_failures": 100}, "lockout": "60s",
                                       "multiplier": 2, "max_lockout": "150s"},
                    "password_spraying": {"distinct_accounts": 3, "window": "10m"}}}

    async def setUp(self) -> None:  # type: ignore[override]
        reason = _redis_unreachable()
        if reason:
            raise unittest.SkipTest(reason)
        await super().setUp()
        self.first_url = self.base_url
        self.hs2 = await build_homeserver(self.config, clock=self.clock)
        self.second_url = f"http://127.0.0.1:{self.hs2.listen(reactor)[0].getHost().port}"
        self.addCleanup(self._clean_redis)

    async def tearDown(self) -> None:  # type: ignore[override]
        for hs in (self.hs, self.hs2):
            assert hs.detection is not None
            await hs.detection.alerts.drain()
        await self.hs2.stop()
        await super().tearDown()

    def _clean_redis(self) -> None:
        import txredisapi

        async def clean() -> None:
            conn = await txredisapi.Connection("127.0.0.1", 6379, reconnect=False)
            try:
                keys = await conn.keys(self.prefix + "*")
                if keys:
                    await conn.delete(*keys)
            finally:
                await conn.disconnect()

        return defer.ensureDeferred(clean())  # type: ignore[return-value]

    async def on(self, which: int) -> None:
        """Send the next requests to server 1 or 2 (after its alert work settled)."""
        for hs in (self.hs, self.hs2):
            assert hs.detection is not None
            await hs.detection.alerts.drain()
        self.base_url = self.first_url if which == 1 else self.second_url

    async def test_login_lockout_started_on_one_is_enforced_by_the_other(self) -> None:
        await self.user("alice")
        for n in range(3):
            await self.on(1 + n % 2)  # the failures are spread over both servers
            resp = await self.login("alice", "wrong-password-123")
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for which in (1, 2):
            await self.on(which)
            hashes = self.count_password_hashes()
            locked = await self.login("alice")
            self.assertMatrixError(locked, 429, "M_LIMIT_EXCEEDED")
            self.assertEqual(locked.json["retry_after_ms"], 60_000)
            self.assertEqual(hashes, [])
        # The state lives in Redis (under the configured prefix), not in either process.
        assert self.hs.detection is not None
        self.assertEqual(self.hs.detection.detection.lockout.retry_after_ms(
            "@alice:test.local", None, self.clock.time_msec()), 0)
        # Expiry on the (shared) clock; a success on server 2 resets the account for both.
        self.advance(61)
        await self.on(2)
        self.assertEqual((await self.login("alice")).code, 200)
        for _ in range(2):
            await self.on(1)
            await self.login("alice", "wrong-password-123")
        await self.on(2)
        self.assertEqual((await self.login("alice")).code, 200)  # 2 < 3: not locked

    async def test_spraying_counted_across_servers(self) -> None:
        for name in ("u1", "u2", "u3"):
            await self.user(name)
        for n, name in enumerate(("u1", "u2", "u3")):
            await self.on(1 + n % 2)
            await self.login(name, "wrong-password-123")
        await self.on(2)
        await self.user("u4")
        locked = await self.login("u4")
        self.assertMatrixError(locked, 429, "M_LIMIT_EXCEEDED")
        await self.on(1)
        alerts = [e for e in await self.hs.stores.security_events.list_events(
                  event_type="alert")  # one database: both servers' entries
                  if (e.details or {}).get("detector") == "password_spraying"]
        self.assertEqual(len(alerts), 1)

    async def test_mfa_code_lockout_shared(self) -> None:
        uid, token, _ = await self.user("hank")
        secret, _ = await self.enrol(uid, token)
        session = (await self.login_first("hank")).json["session"]
        right = self.code(secret)
        wrong = [c for c in ("000000", "111111", "222222", "333333", "444444", "555555",
                             "666666") if c not in {right, self.code(secret, -1),
                                                    self.code(secret, 1)}][:5]
        for n, code in enumerate(wrong):
            await self.on(1 + n % 2)
            self.assertEqual((await self.login_second(session, TOTP, code)).code, 401)
        for which in (1, 2):
            await self.on(which)
            locked = await self.login_second(session, TOTP, right)
            self.assertMatrixError(locked, 429, "M_LIMIT_EXCEEDED")
            self.assertEqual(locked.json["retry_after_ms"], 30_000)
        self.advance(31)
        await self.on(2)
        ok = await self.login_second(session, TOTP, self.code(secret))
        self.assertEqual(ok.code, 200, ok)


class SharedLockoutFallbackTest(unittest.TestCase):
    """Redis down: the in-process state answers (lockouts still enforced, no errors)."""

    async def test_unreachable_redis_falls_back_to_process_state(self) -> None:
        from homeserver.detection.config import LoginFailuresConfig
        from homeserver.detection.detectors import LoginLockout
        from homeserver.detection.shared_state import SharedLoginLockout, SharedRedis

        class DeadConnection:
            def eval(self, *args: Any) -> Any:
                return defer.fail(ConnectionRefusedError("down"))

        cfg = LoginFailuresConfig(account_max_failures=2, ip_max_failures=100)
        redis = SharedRedis(DeadConnection(), reactor, 0.5, "x:")
        shared = SharedLoginLockout(LoginLockout(cfg), cfg, redis)
        now = 1_000_000
        self.assertEqual(await shared.failure("@a:hs", "10.0.0.1", now), [])
        locks = await shared.failure("@a:hs", "10.0.0.1", now + 1)
        self.assertEqual([(lk.scope, lk.duration_s, lk.failures) for lk in locks],
                         [("account", 60.0, 2)])
        self.assertTrue(redis.fallback_active)
        self.assertEqual(await shared.retry_after_ms("@a:hs", "10.0.0.1", now + 1), 60_000)
        self.assertEqual(await shared.retry_after_ms("@b:hs", "10.0.0.1", now + 1), 0)


class AlertOrderTest(DetectionTestCase):
    async def test_alerts_of_a_user_keep_their_order(self) -> None:
        """Two alerts raised for one user, the first one's audit write the slower: the
        notices still arrive in the order raised."""
        from twisted.internet import task

        token = await self.user("alice")
        assert self.hs.detection is not None
        alerts = self.hs.detection.alerts
        recorder = alerts.recorder
        real = recorder.record
        gate: defer.Deferred[None] = defer.Deferred()
        calls: list[int] = []

        async def slow_first(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                await gate
            return await real(*args, **kwargs)

        recorder.record = slow_first  # type: ignore[method-assign]
        try:
            first = defer.ensureDeferred(alerts.raise_alert(
                "test", "warning", "first", user_id=ALICE, notice="first notice"))
            second = defer.ensureDeferred(alerts.raise_alert(
                "test", "warning", "second", user_id=ALICE, notice="second notice"))
            await task.deferLater(reactor, 0.3, lambda: None)  # the second may run ahead
            gate.callback(None)
            await first
            await second
        finally:
            recorder.record = real  # type: ignore[method-assign]
        notices = [n for n in await self.notices(token) if n.endswith(" notice")]
        self.assertEqual(notices, ["first notice", "second notice"])
