"""The two limits that do not go through the dispatch point's route table: the UIA
password stage (class ``uia_password``, per user, on the shared limiter so Redis and
the plugin policy apply, admins included) and the WebSocket endpoint (the per-IP
``api`` class on the upgrade and on every message)."""

from __future__ import annotations

import json
from typing import Any

import txredisapi
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from homeserver.rest.client.websocket import CLOSE_TOO_MANY, MAX_RATE_LIMITED, WS_PATH
from tests.harness import TEST_PASSWORD
from tests.rest import test_websocket as _ws  # (a module: trial does not re-run its tests)
from tests.rest.room_helpers import CS
from tests.rest.test_rate_limits import REDIS_DB, REDIS_HOST, REDIS_PORT, LimitedMixin, RedisTestMixin


class UiaPasswordLimitTests(LimitedMixin):
    async def _attempts(self, token: str, user: str) -> Any:
        path = f"{CS}/account/password"
        first = await self.request("POST", path, {"new_password": "a-new-passw0rd"}, token=token)
        self.assertEqual(first.code, 401, first)
        session = first.json["session"]

        async def attempt(password: str) -> Any:
            return await self.request("POST", path, {"new_password": "a-new-passw0rd", "auth": {
                "type": "m.login.password", "session": session, "password": password,
                "identifier": {"type": "m.id.user", "user": user}}}, token=token)
        return attempt

    async def test_shared_limiter_per_user_with_exact_429(self) -> None:
        token = await self.user("uma")
        other = await self.user("otto")
        self.set_limit("uia_password", 0.5, 2)
        attempt = await self._attempts(token, "uma")
        for _ in range(2):
            resp = await attempt("wrong-password")
            self.assertMatrixError(resp, 401, "M_FORBIDDEN")
        before = self.rejections("uia_password")
        self.assertExactly429(await attempt(TEST_PASSWORD), 2000)
        self.assertEqual(self.rejections("uia_password"), before + 1)
        # Another user's budget is untouched.
        other_attempt = await self._attempts(other, "otto")
        self.assertMatrixError(await other_attempt("wrong-password"), 401, "M_FORBIDDEN")
        self.advance(2)
        self.assertEqual((await attempt(TEST_PASSWORD)).code, 200)

    async def test_admins_are_not_exempt(self) -> None:
        await self.hs.registration.create_account("boss", TEST_PASSWORD, is_admin=True)
        token = (await self.login("boss")).json["access_token"]
        self.set_limit("uia_password", 0.5, 1)
        attempt = await self._attempts(token, "boss")
        self.assertMatrixError(await attempt("wrong-password"), 401, "M_FORBIDDEN")
        self.assertMatrixError(await attempt(TEST_PASSWORD), 429, "M_LIMIT_EXCEEDED")

    async def test_policy_applies(self) -> None:
        token = await self.user("pam")
        self.set_limit("uia_password", 0.5, 1)
        seen: list[tuple[str, str | None]] = []

        def policy(action: str, user_id: str | None, ip: str) -> float | None:
            if action == "uia_password":
                seen.append((action, user_id))
                return 3.0
            return None

        assert self.hs.rate_limiter is not None
        self.hs.rate_limiter.set_policy(policy)
        attempt = await self._attempts(token, "pam")
        for _ in range(3):  # three times the burst
            self.assertMatrixError(await attempt("wrong-password"), 401, "M_FORBIDDEN")
        self.assertMatrixError(await attempt("wrong-password"), 429, "M_LIMIT_EXCEEDED")
        self.assertIn(("uia_password", "@pam:test.local"), seen)


class UiaPasswordRedisTest(RedisTestMixin):
    async def test_budget_lives_in_redis(self) -> None:
        token = await self.user("rita")
        self.set_limit("uia_password", 0.5, 1)
        attempt = await UiaPasswordLimitTests._attempts(self, token, "rita")  # type: ignore[arg-type]
        self.assertMatrixError(await attempt("wrong-password"), 401, "M_FORBIDDEN")
        self.assertMatrixError(await attempt(TEST_PASSWORD), 429, "M_LIMIT_EXCEEDED")
        conn = await txredisapi.Connection(REDIS_HOST, REDIS_PORT, dbid=REDIS_DB,
                                           reconnect=False)
        try:
            keys = await conn.keys(f"{self.prefix}*")
        finally:
            await conn.disconnect()
        self.assertIn(f"{self.prefix}rl:uia_password:@rita:test.local", keys)


class _Raw(protocol.Protocol):
    """Collects everything the server sends until it hangs up."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.transport.write(self._request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if not self.done.called:
            self.done.callback(self.data)


class WebSocketRateLimitTest(LimitedMixin):
    _clients: list[Any]
    connect = _ws.WebSocketTest.connect
    server_factory = _ws.WebSocketTest.server_factory
    _close_clients = _ws.WebSocketTest._close_clients  # noqa: SLF001

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self._clients = []

    async def _raw_upgrade(self) -> bytes:
        port = int(self.base_url.rsplit(":", 1)[1])
        request = (f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        raw = _Raw(request)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
        d = raw.done
        d.addTimeout(5, reactor)
        return await d

    async def test_upgrade_counts_against_api_per_ip(self) -> None:
        alice = await self.user("alice")
        self.set_limit("api", 0.25, 1)
        self.advance(10)  # a full bucket of the lowered size
        client = await self.connect(alice)
        before = self.rejections("api")
        raw = await self._raw_upgrade()
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 429 "), raw)
        self.assertIn(b"Retry-After: 4", head)
        self.assertEqual(json.loads(body), {"errcode": "M_LIMIT_EXCEEDED",
                                            "error": "Too many requests",
                                            "retry_after_ms": 4000})
        self.assertEqual(self.rejections("api"), before + 1)
        # Plain requests from that IP share the budget.
        self.assertExactly429(await self.request("GET", f"{CS}/account/whoami", token=alice),
                              4000)
        client.close()
        await client.closed()

    async def test_messages_count_against_api_per_ip(self) -> None:
        alice = await self.user("alice")
        self.set_limit("api", 0.5, 2)
        self.advance(10)
        client = await self.connect(alice)  # the upgrade takes one token
        client.send({"type": "subscribe", "since": None})  # and this one the last
        self.assertEqual((await client.next())["type"], "sync")
        errors = []
        for _ in range(MAX_RATE_LIMITED):
            client.send({"type": "subscribe", "since": None})
        for _ in range(MAX_RATE_LIMITED - 1):
            errors.append(await client.next())
        for err in errors:
            self.assertEqual(err, {"type": "error", "errcode": "M_LIMIT_EXCEEDED",
                                   "error": "Too many requests", "retry_after_ms": 2000})
        code, _reason = await client.closed()
        self.assertEqual(code, CLOSE_TOO_MANY)
        self.assertEqual(self.rejections("api"), MAX_RATE_LIMITED)
