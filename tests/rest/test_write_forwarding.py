"""Writes forwarded over internal HTTP (issue 18): a ``client`` worker (B) forwards every
write to the main process (A, ``self.hs``) through A's ``replication`` listener, with the
shared secret, and relays the answer. Two homeservers in one trial process sharing one
PostgreSQL schema and the real Redis. Config rules are tested without a database."""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from homeserver.config.loader import ConfigError
from homeserver.config.workers import ReplicationEndpoint, select_worker
from homeserver.replication.forwarding import (
    CLIENT_IP_HEADER,
    FORWARD_PREFIX,
    SECRET_HEADER,
    Forwarder,
)
from tests.harness import HomeserverTestCase, Response, free_port, make_config
from tests.rest.test_replication import REDIS, MainAndReaderMixin, require_workers

V3 = "/_matrix/client/v3"
SECRET = "s3cret-" + "x" * 24


def forwarding_overrides(prefix: str, replication_port: int,
                         rate_limits: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "redis": {"host": REDIS[0], "port": REDIS[1], "key_prefix": prefix},
        "listeners": [
            {"port": 0, "bind_addresses": ["127.0.0.1"]},
            {"port": replication_port, "bind_addresses": ["127.0.0.1"],
             "resources": ["replication"]},
        ],
        "workers": {
            "main": {"role": "main", "replication": {"host": "127.0.0.1",
                                                     "port": replication_port,
                                                     "secret": SECRET}},
            "reader": {"role": "client",
                       "listeners": [{"port": 0, "x_forwarded": True}]},
        },
    }
    if rate_limits:
        out["rate_limits"] = rate_limits
    return out


class ForwardingConfigTest(unittest.TestCase):
    def _config(self, main: dict[str, Any], **workers: Any) -> Any:
        return make_config("/tmp/unused", engine="postgres", redis={},
                           workers={"main": main, "reader": {"role": "client"}, **workers})[0]

    def test_forwarding_configured(self) -> None:
        config = self._config({"role": "main", "replication": {
            "host": "127.0.0.1", "port": 9093, "secret": SECRET}})
        wc = config.workers
        self.assertTrue(wc.forwards_writes)
        self.assertEqual(wc.endpoint("main"), ReplicationEndpoint("127.0.0.1", 9093))
        self.assertEqual(wc.replication_secret, SECRET)
        self.assertNotIn(SECRET, repr(config))  # never in a repr (logs, tracebacks)
        self.assertTrue(select_worker(config, "reader").workers.forwards_writes)

    def test_without_replication_nothing_forwards(self) -> None:
        config = self._config({"role": "main"})
        self.assertFalse(config.workers.forwards_writes)
        self.assertIsNone(config.workers.replication_secret)

    def test_bad_replication_sections(self) -> None:
        for main, extra, message in [
            ({"role": "main", "replication": {"host": "h", "port": 1}}, {}, "secret: required"),
            ({"role": "main", "replication": {"host": "h", "port": 1, "secret": "short"}}, {},
             "at least 16"),
            ({"role": "main", "replication": {"host": "h", "port": 0, "secret": SECRET}}, {},
             "invalid config"),
            ({"role": "main"}, {"c2": {"role": "client", "replication": {
                "host": "h", "port": 2, "secret": SECRET}}}, "given on the main"),
        ]:
            with self.assertRaisesRegex(ConfigError, message):
                self._config(main, **extra)

    def test_secret_from_environment(self) -> None:
        import os

        os.environ["PARLEY_TEST_REPLICATION_SECRET"] = SECRET
        self.addCleanup(os.environ.pop, "PARLEY_TEST_REPLICATION_SECRET", None)
        config = self._config({"role": "main", "replication": {
            "host": "h", "port": 1, "secret": {"env": "PARLEY_TEST_REPLICATION_SECRET"}}})
        self.assertEqual(config.workers.replication_secret, SECRET)

    def test_replication_listener_resource(self) -> None:
        config, _ = make_config("/tmp/unused", engine="sqlite", listeners=[
            {"port": 0, "resources": ["client", "replication"]}])
        self.assertEqual(config.listeners[0].resources, ["client", "replication"])


class WriteForwardingTest(MainAndReaderMixin, HomeserverTestCase):
    """A = main (self.hs), B = a client worker forwarding writes to A."""

    timeout = 60

    def rate_limits(self) -> dict[str, Any] | None:
        return None

    def config_overrides(self) -> dict[str, Any]:
        self.replication_port = free_port()
        return forwarding_overrides(f"t{secrets.token_hex(6)}:", self.replication_port,
                                    self.rate_limits())

    async def setUp(self) -> None:  # type: ignore[override]
        require_workers(self.engine)
        await super().setUp()
        self.rep_url = f"http://127.0.0.1:{self.replication_port}"
        await self.start_reader()

    async def at(self, url: str, method: str, path: str, body: Any = None,
                 token: str | None = None, headers: dict[str, str] | None = None) -> Response:
        self.base_url = url  # request() reads it before its first await
        try:
            d = defer.ensureDeferred(self.request(method, path, body, token, headers=headers))
        finally:
            self.base_url = self.a_url
        return await d

    async def on_b(self, method: str, path: str, body: Any = None, token: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
        return await self.at(self.b_url, method, path, body, token, headers)

    async def register_on_b(self, localpart: str) -> dict[str, Any]:
        body: dict[str, Any] = {"username": localpart, "password": "correct-horse-battery"}
        first = await self.on_b("POST", f"{V3}/register", body)
        self.assertEqual(first.code, 401, first)  # the UIA answer, relayed
        body["auth"] = {"type": "m.login.dummy", "session": first.json["session"]}
        second = await self.on_b("POST", f"{V3}/register", body)
        self.assertEqual(second.code, 200, second)
        return second.json

    def forwarder(self) -> Forwarder:
        route = next(r for r in self.b.router.routes if r.extra.get("forwarded"))
        return route.handler.__self__  # type: ignore[attr-defined, no-any-return]


class ForwardingTest(WriteForwardingTest):
    async def test_writes_through_worker_land_on_main(self) -> None:
        token = (await self.register_on_b("alice"))["access_token"]
        created = await self.on_b("POST", f"{V3}/createRoom", {"name": "Via B"}, token)
        self.assertEqual(created.code, 200, created)
        room_id = created.json["room_id"]
        send = await self.on_b("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1",
                               {"msgtype": "m.text", "body": "through the worker"}, token)
        self.assertEqual(send.code, 200, send)
        self.assertEqual(send.header("Content-Type"), "application/json")
        self.assertEqual(send.header("Access-Control-Allow-Origin"), "*")
        event_id = send.json["event_id"]
        # The same transaction id again: main's idempotency answers the same event.
        again = await self.on_b("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1",
                                {"msgtype": "m.text", "body": "through the worker"}, token)
        self.assertEqual(again.json, {"event_id": event_id})
        # On main, and readable through the worker once replicated.
        on_a = await self.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}", token=token)
        self.assertEqual(on_a.code, 200, on_a)
        self.assertEqual(on_a.json["content"]["body"], "through the worker")
        self.assertGreaterEqual(self.forwarder().forwarded, 5)

    async def test_errors_are_relayed(self) -> None:
        token = (await self.register_on_b("bob"))["access_token"]
        for path, body in [(f"{V3}/rooms/!nope:test.local/send/m.room.message/t1",
                            {"msgtype": "m.text", "body": "x"}),
                           (f"{V3}/createRoom", {"visibility": 5})]:
            direct = await self.request("PUT" if "send" in path else "POST", path, body, token)
            via_b = await self.on_b("PUT" if "send" in path else "POST", path, body, token)
            self.assertEqual((via_b.code, via_b.json), (direct.code, direct.json))
        unauth = await self.on_b("POST", f"{V3}/createRoom", {})
        self.assertMatrixError(unauth, 401, "M_MISSING_TOKEN")
        bad = await self.on_b("POST", f"{V3}/createRoom", {}, "not-a-token")
        self.assertMatrixError(bad, 401, "M_UNKNOWN_TOKEN")
        not_json = await self.at(self.b_url, "POST", f"{V3}/createRoom", None, token,
                                 headers={"Content-Type": "application/json"})
        self.assertEqual(not_json.code, 200, not_json)  # an empty body is {} on main too

    async def test_login_and_logout_through_worker(self) -> None:
        await self.register_on_b("carol")
        login = await self.on_b("POST", f"{V3}/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"},
            "password": "correct-horse-battery"})
        self.assertEqual(login.code, 200, login)
        token = login.json["access_token"]
        who = await self.on_b("GET", f"{V3}/account/whoami", token=token)  # served by B
        self.assertEqual(who.code, 200, who)
        out = await self.on_b("POST", f"{V3}/logout", {}, token)
        self.assertEqual(out.code, 200, out)
        for _ in range(50):  # the revocation reaches B over Redis at once
            who = await self.on_b("GET", f"{V3}/account/whoami", token=token)
            if who.code == 401:
                break
            await deferLater(reactor, 0.02)
        self.assertMatrixError(who, 401, "M_UNKNOWN_TOKEN")

    async def test_media_is_not_forwarded(self) -> None:
        token = (await self.register_on_b("dave"))["access_token"]
        up = await self.at(self.b_url, "POST", "/_matrix/media/v3/upload", None, token,
                           headers={"Content-Type": "text/plain"})
        self.assertMatrixError(up, 404, "M_UNRECOGNIZED")

    async def test_secret_guards_the_internal_endpoint(self) -> None:
        path = f"{FORWARD_PREFIX}/_matrix/client/versions"
        missing = await self.at(self.rep_url, "GET", path)
        self.assertMatrixError(missing, 401, "M_MISSING_TOKEN")
        wrong = await self.at(self.rep_url, "GET", path, headers={SECRET_HEADER: "guess" * 8})
        self.assertMatrixError(wrong, 403, "M_FORBIDDEN")
        self.assertNotIn(SECRET, wrong.raw.decode())
        right = await self.at(self.rep_url, "GET", path, headers={SECRET_HEADER: SECRET})
        self.assertEqual(right.code, 200, right)
        self.assertIn("versions", right.json)
        # Nothing but the forward endpoint on the replication listener, and never it on
        # the client listener; no recursion, no non-client path.
        plain = await self.at(self.rep_url, "GET", "/_matrix/client/versions")
        self.assertMatrixError(plain, 404, "M_UNRECOGNIZED")
        on_client = await self.request("GET", path, headers={SECRET_HEADER: SECRET})
        self.assertMatrixError(on_client, 404, "M_UNRECOGNIZED")
        for inner in (f"{FORWARD_PREFIX}/_matrix/client/versions", "/metrics",
                      "/_matrix/federation/v1/version", "x"):
            nested = await self.at(self.rep_url, "GET", f"{FORWARD_PREFIX}/{inner.lstrip('/')}",
                                   headers={SECRET_HEADER: SECRET})
            self.assertMatrixError(nested, 404, "M_UNRECOGNIZED")

    async def test_main_unreachable_is_502(self) -> None:
        token = (await self.register_on_b("erin"))["access_token"]
        forwarder = self.forwarder()
        closed = ReplicationEndpoint("127.0.0.1", free_port())
        real, forwarder._target = forwarder._target, lambda _a, _p: closed  # noqa: SLF001
        try:
            resp = await self.on_b("POST", f"{V3}/createRoom", {}, token)
        finally:
            forwarder._target = real  # noqa: SLF001
        self.assertMatrixError(resp, 502, "M_UNKNOWN")
        self.assertEqual(forwarder.failures, 1)


class ForwardedRateLimitTest(WriteForwardingTest):
    """Limits apply once, at main, keyed by the real client IP (B trusts its proxy's
    X-Forwarded-For and passes the client IP on)."""

    def rate_limits(self) -> dict[str, Any] | None:
        from homeserver.config.model import DEFAULT_RATE_LIMITS

        limits = {k: {"per_second": 1000, "burst": 1_000_000} for k in DEFAULT_RATE_LIMITS}
        limits["login"] = {"per_second": 0.01, "burst": 2}
        return limits

    async def test_limits_once_by_client_ip(self) -> None:
        await self.register_on_b("frank")
        checks: list[str] = []
        b_limiter = self.b.rate_limiter
        real_check = b_limiter.check

        async def counting(limit: str, *args: Any, **kwargs: Any) -> Any:
            checks.append(limit)
            return await real_check(limit, *args, **kwargs)

        b_limiter.check = counting  # type: ignore[method-assign]
        body = {"type": "m.login.password", "password": "wrong-password-here",
                "identifier": {"type": "m.id.user", "user": "frank"}}
        client = {"X-Forwarded-For": "203.0.113.7"}
        codes = [(await self.on_b("POST", f"{V3}/login", body, headers=client)).code
                 for _ in range(2)]
        self.assertEqual(codes, [403, 403])
        limited = await self.on_b("POST", f"{V3}/login", body, headers=client)
        self.assertMatrixError(limited, 429, "M_LIMIT_EXCEEDED")
        self.assertIsNotNone(limited.header("Retry-After"))  # relayed
        self.assertIn("retry_after_ms", limited.json)
        # Another client IP through the same worker has its own budget (the key is the
        # client's IP, not the worker's); the worker itself checked no limit.
        other = await self.on_b("POST", f"{V3}/login", body,
                                headers={"X-Forwarded-For": "203.0.113.8"})
        self.assertEqual(other.code, 403, other)
        self.assertEqual(checks, [])
        # The forwarded IP is trusted only with the secret: a client cannot pick its key.
        spoof = await self.at(self.rep_url, "POST", f"{FORWARD_PREFIX}{V3}/login", body,
                              headers={CLIENT_IP_HEADER: "203.0.113.9"})
        self.assertMatrixError(spoof, 401, "M_MISSING_TOKEN")
