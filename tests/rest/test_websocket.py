"""The WebSocket push channel, driven by a real autobahn client over loopback."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.handlers.sync import SyncToken
from homeserver.handlers.sync_filter import SyncFilter
from homeserver.handlers.sync_push import SyncPushStream, is_empty_batch
from homeserver.rest.client.websocket import (
    AUTH_TIMEOUT_S,
    CLOSE_BAD_REQUEST,
    CLOSE_SHUTDOWN,
    CLOSE_UNAUTHORIZED,
    MAX_ERRORS,
    REAUTH_INTERVAL_S,
    WS_PATH,
    SyncWebSocketFactory,
)
from tests.rest.room_helpers import CS, RoomTestCase

WAIT_S = 5.0
QUIET_S = 0.3  # how long "nothing arrives" is watched for


class _ClientProtocol(WebSocketClientProtocol):
    factory: _ClientFactory

    def onOpen(self) -> None:  # noqa: N802 (autobahn API)
        self.factory.conn = self
        if not self.factory.opened.called:
            self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.factory.messages.put(json.loads(payload))
        self.factory.received += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url, headers=headers)
        self.conn: _ClientProtocol | None = None
        self.opened: defer.Deferred[_ClientProtocol] = defer.Deferred()
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.messages: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.received = 0

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        if not self.opened.called:
            self.opened.errback(reason.value)
        if not self.closed.called:
            self.closed.callback((None, "connection failed"))


class Client:
    """A test client: send JSON, await the next message or the close."""

    def __init__(self, factory: _ClientFactory) -> None:
        self._f = factory

    @property
    def received(self) -> int:
        return self._f.received

    def send(self, message: Any) -> None:
        assert self._f.conn is not None
        raw = message if isinstance(message, bytes) else json.dumps(message).encode()
        self._f.conn.sendMessage(raw, isBinary=False)

    async def next(self, timeout: float = WAIT_S) -> dict[str, Any]:
        d = self._f.messages.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def next_sync(self) -> dict[str, Any]:
        msg = await self.next()
        assert msg["type"] == "sync", msg
        return msg["batch"]

    async def nothing_for(self, seconds: float = QUIET_S) -> bool:
        await task.deferLater(reactor, seconds, lambda: None)
        return not self._f.messages.pending

    async def closed(self, timeout: float = WAIT_S) -> tuple[int | None, str | None]:
        d: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self._f.closed.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        d.addTimeout(timeout, reactor)
        return await d

    def close(self) -> None:
        if self._f.conn is not None and not self._f.closed.called:
            self._f.conn.sendClose(1000)


def bodies(batch: dict[str, Any], room_id: str) -> list[str]:
    room = batch["rooms"]["join"].get(room_id)
    if room is None:
        return []
    return [e["content"].get("body") for e in room["timeline"]["events"]
            if e["type"] == "m.room.message"]


class WebSocketTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        # Shorter than the 30 s re-check, so a stale "active" answer can expire before it.
        return {"auth": {"session_cache_ttl": "5s"}}

    _clients: list[tuple[Client, Any]]

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self._clients = []

    async def _close_clients(self) -> None:
        for client, _connector in self._clients:
            client.close()
        for client, connector in self._clients:
            await client.closed()
            connector.disconnect()
        # The server's side of a socket goes shortly after the client's.
        for _ in range(int(WAIT_S / 0.01)):
            if self.server_factory().connection_count() == 0:
                return
            await task.deferLater(reactor, 0.01, lambda: None)

    def server_factory(self) -> SyncWebSocketFactory:
        resource = self.hs.site.resource.mounted(WS_PATH)  # type: ignore[attr-defined]
        return resource._factory  # noqa: SLF001 (autobahn keeps it private)

    async def connect(self, token: str | None = None, query: str = "",
                      headers: dict[str, str] | None = None) -> Client:
        url = self.base_url.replace("http://", "ws://") + WS_PATH + query
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        factory = _ClientFactory(url, hdrs)
        port = int(self.base_url.rsplit(":", 1)[1])
        connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=WAIT_S)
        client = Client(factory)
        if not self._clients:
            self.addCleanup(lambda: defer.ensureDeferred(self._close_clients()))
        self._clients.append((client, connector))
        d = factory.opened
        d.addTimeout(WAIT_S, reactor)
        await d
        return client

    async def subscribed(self, token: str, since: str | None = None, **extra: Any) -> Client:
        client = await self.connect(token)
        client.send({"type": "subscribe", "since": since, **extra})
        return client

    async def test_auth_by_header_initial_batch(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.send_ok(alice, room, "before")
        client = await self.subscribed(alice)
        batch = await client.next_sync()
        self.assertIn("next_batch", batch)
        self.assertEqual(bodies(batch, room), ["before"])
        # The same JSON as /sync.
        plain = await self.sync(alice)
        self.assertEqual(set(batch), set(plain))
        self.assertEqual(set(batch["rooms"]["join"][room]), set(plain["rooms"]["join"][room]))
        self.assertEqual(
            [e["event_id"] for e in batch["rooms"]["join"][room]["timeline"]["events"]],
            [e["event_id"] for e in plain["rooms"]["join"][room]["timeline"]["events"]])

    async def test_auth_by_first_message(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        client = await self.connect()
        # Sent back to back: the subscribe waits for the auth to finish.
        client.send({"type": "auth", "access_token": alice})
        client.send({"type": "subscribe", "since": None})
        batch = await client.next_sync()
        self.assertIn(room, batch["rooms"]["join"])

    async def test_bad_token_closes_4401_without_data(self) -> None:
        alice = await self.user("alice")
        cases = [
            await self.connect("not-a-token"),
            await self.connect(headers={"Authorization": "Basic abc"}),
            await self.connect(query=f"?access_token={alice}"),
        ]
        by_message = await self.connect()
        by_message.send({"type": "auth", "access_token": "nope"})
        cases.append(by_message)
        not_auth = await self.connect()
        not_auth.send({"type": "subscribe", "since": None})
        cases.append(not_auth)
        for client in cases:
            code, reason = await client.closed()
            self.assertEqual(code, CLOSE_UNAUTHORIZED)
            self.assertTrue(reason)
            self.assertEqual(client.received, 0)

    async def test_auth_timeout(self) -> None:
        client = await self.connect()
        self.advance(AUTH_TIMEOUT_S + 1)
        code, reason = await client.closed()
        self.assertEqual(code, CLOSE_UNAUTHORIZED)
        self.assertIn("timed out", reason or "")
        self.assertEqual(client.received, 0)

    async def test_message_from_another_user_is_pushed(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        since = (await self.sync(bob))["next_batch"]
        client = await self.subscribed(bob, since)
        self.assertTrue(await client.nothing_for())  # nothing new, nothing pushed
        await self.send_ok(alice, room, "hi bob")
        batch = await client.next_sync()
        self.assertEqual(bodies(batch, room), ["hi bob"])
        events = batch["rooms"]["join"][room]["timeline"]["events"]
        self.assertEqual(events[-1]["sender"], "@alice:test.local")
        self.assertNotEqual(batch["next_batch"], since)

    async def test_ack_backpressure_and_resume_from_ack(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        client = await self.subscribed(alice)
        first = await client.next_sync()
        await self.send_ok(alice, room, "one")
        second = await client.next_sync()
        self.assertEqual(bodies(second, room), ["one"])
        # Two batches unacknowledged: the next one waits.
        await self.send_ok(alice, room, "two")
        self.assertTrue(await client.nothing_for())
        client.send({"type": "ack", "next_batch": first["next_batch"]})
        third = await client.next_sync()
        self.assertEqual(bodies(third, room), ["two"])
        # Acknowledging a later batch acknowledges the ones before it.
        client.send({"type": "ack", "next_batch": third["next_batch"]})
        await self.send_ok(alice, room, "three")
        fourth = await client.next_sync()
        self.assertEqual(bodies(fourth, room), ["three"])
        client.send({"type": "ack", "next_batch": fourth["next_batch"]})
        # Resubscribing without "since" resumes from the last acknowledged position:
        # nothing already acknowledged comes again.
        client.send({"type": "subscribe", "filter": {"room": {"timeline": {"limit": 5}}}})
        self.assertTrue(await client.nothing_for())
        await self.send_ok(alice, room, "four")
        fifth = await client.next_sync()
        self.assertEqual(bodies(fifth, room), ["four"])

    async def test_resubscribe_from_old_token_redelivers(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        client = await self.subscribed(alice)
        first = await client.next_sync()
        client.send({"type": "ack", "next_batch": first["next_batch"]})
        await self.send_ok(alice, room, "maybe lost")
        second = await client.next_sync()
        self.assertEqual(bodies(second, room), ["maybe lost"])
        # The connection drops before the ack; the client reconnects from its last ack.
        client.close()
        await client.closed()
        again = await self.subscribed(alice, first["next_batch"])
        redelivered = await again.next_sync()
        self.assertEqual(bodies(redelivered, room), ["maybe lost"])
        self.assertEqual(redelivered["next_batch"], second["next_batch"])

    async def test_stored_filter_by_id(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        since = (await self.sync(alice))["next_batch"]
        resp = await self.request("POST", f"{CS}/user/@alice:test.local/filter",
                                  {"room": {"timeline": {"not_types": ["m.room.message"]}}},
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        client = await self.subscribed(alice, since, filter=resp.json["filter_id"])
        await self.send_ok(alice, room, "filtered away")
        self.assertTrue(await client.nothing_for())
        topic = await self.put_state(alice, room, "m.room.topic", {"topic": "t"})
        self.assertEqual(topic.code, 200, topic)
        batch = await client.next_sync()
        types = [e["type"] for e in batch["rooms"]["join"][room]["timeline"]["events"]]
        self.assertEqual(types, ["m.room.topic"])

    async def test_malformed_messages(self) -> None:
        alice = await self.user("alice")
        client = await self.connect(alice)
        bad: list[Any] = [
            b"not json",
            [],
            {"type": "dance"},
            {"type": "subscribe", "since": 5},
        ]
        expected = ["M_NOT_JSON", "M_BAD_JSON", "M_BAD_JSON", "M_BAD_JSON"]
        for message, errcode in zip(bad, expected, strict=True):
            client.send(message)
            err = await client.next()
            self.assertEqual(err["type"], "error")
            self.assertEqual(err["errcode"], errcode, err)
            self.assertIsInstance(err["error"], str)
        # A well-formed message still works between errors.
        client.send({"type": "subscribe", "since": None})
        await client.next_sync()
        client.send({"type": "ack", "next_batch": "s999_999"})
        err = await client.next()
        self.assertEqual(err["errcode"], "M_INVALID_PARAM")
        self.assertEqual(MAX_ERRORS, 5)
        code, _ = await client.closed()
        self.assertEqual(code, CLOSE_BAD_REQUEST)

    async def test_bad_since_and_filter(self) -> None:
        alice = await self.user("alice")
        client = await self.connect(alice)
        client.send({"type": "subscribe", "since": "garbage"})
        self.assertEqual((await client.next())["errcode"], "M_INVALID_PARAM")
        client.send({"type": "subscribe", "since": None, "filter": "12345"})
        self.assertEqual((await client.next())["errcode"], "M_INVALID_PARAM")
        client.send({"type": "subscribe", "since": None,
                     "filter": {"room": {"timeline": {"limit": "ten"}}}})
        self.assertEqual((await client.next())["errcode"], "M_BAD_JSON")

    async def test_oversized_message_closes(self) -> None:
        alice = await self.user("alice")
        client = await self.connect(alice)
        client.send({"type": "subscribe", "since": None, "pad": "x" * 70_000})
        code, _ = await client.closed()
        self.assertEqual(code, 1009)  # message too big

    async def test_logout_stops_the_stream(self) -> None:
        alice = await self.user("alice")
        client = await self.subscribed(alice)
        await client.next_sync()
        resp = await self.request("POST", f"{CS}/logout", {}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        code, reason = await client.closed()
        self.assertEqual(code, CLOSE_UNAUTHORIZED)
        self.assertIn("revoked", reason or "")
        self.assertEqual(client.received, 1)
        # Logged out: the token no longer opens a stream either.
        again = await self.subscribed(alice)
        self.assertEqual((await again.closed())[0], CLOSE_UNAUTHORIZED)
        self.assertEqual(again.received, 0)

    async def test_revocation_seen_before_push(self) -> None:
        """A revocation this process was not told about (another worker's) is caught by the
        re-authentication before each push: nothing is sent."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        since = (await self.sync(bob))["next_batch"]
        client = await self.subscribed(bob, since)
        whoami = await self.request("GET", f"{CS}/account/whoami", token=bob)
        device = whoami.json["device_id"]
        await self.hs.stores.sessions.revoke_device_sessions(
            "@bob:test.local", [device], "test", self.clock.time_msec())
        self.advance(self.config.auth.session_cache_ttl + 1)  # the cached "active" expires
        self.assertLess(self.config.auth.session_cache_ttl + 1, REAUTH_INTERVAL_S)
        await self.send_ok(alice, room, "not for a revoked session")
        code, _ = await client.closed()
        self.assertEqual(code, CLOSE_UNAUTHORIZED)
        self.assertEqual(client.received, 0)

    async def test_expiry_closes_and_renewal_keeps_alive(self) -> None:
        reg = await self.register("alice", refresh_token=True)
        first_token = reg["access_token"]
        room = await self.create_room(first_token)
        renewed = await self.subscribed(first_token)
        await renewed.next_sync()
        expiring = await self.subscribed(first_token)
        await expiring.next_sync()
        lifetime = self.config.auth.access_token_lifetime + self.config.auth.clock_skew
        self.advance(lifetime - 60)
        refreshed = await self.request("POST", f"{CS}/refresh",
                                       {"refresh_token": reg["refresh_token"]})
        self.assertEqual(refreshed.code, 200, refreshed)
        renewed.send({"type": "auth", "access_token": refreshed.json["access_token"]})
        # Past the first token's expiry: the periodic check closes the connection that
        # was not renewed, and keeps the renewed one.
        for _ in range(int(120 / REAUTH_INTERVAL_S) + 1):
            self.advance(REAUTH_INTERVAL_S)
            await task.deferLater(reactor, 0.05, lambda: None)
        code, reason = await expiring.closed()
        self.assertEqual(code, CLOSE_UNAUTHORIZED)
        self.assertIn("expired", reason or "")
        await self.send_ok(refreshed.json["access_token"], room, "still here")
        batch = await renewed.next_sync()
        self.assertEqual(bodies(batch, room), ["still here"])

    async def test_renewal_for_another_user_refused(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        client = await self.connect(alice)
        client.send({"type": "auth", "access_token": bob})
        err = await client.next()
        self.assertEqual(err["errcode"], "M_FORBIDDEN")

    async def test_shutdown_closes_connections(self) -> None:
        alice = await self.user("alice")
        client = await self.subscribed(alice)
        await client.next_sync()
        self.server_factory().close_all()
        code, _ = await client.closed()
        self.assertEqual(code, CLOSE_SHUTDOWN)

    async def test_plain_http_routing(self) -> None:
        resp = await self.request("GET", WS_PATH)
        self.assertGreaterEqual(resp.code, 400)
        versions = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(versions.code, 200)
        unknown = await self.request("GET", WS_PATH + "/x")
        self.assertMatrixError(unknown, 404, "M_UNRECOGNIZED")


class PushStreamUnitTest(unittest.TestCase):
    """The transport-independent parts: what counts as news, how acks free slots."""

    def test_is_empty_batch(self) -> None:
        empty = {"next_batch": "s2_0", "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
                 "account_data": {"events": []}, "presence": {"events": []},
                 "to_device": {"events": []}, "device_lists": {"changed": [], "left": []},
                 "device_one_time_keys_count": {"signed_curve25519": 3}}
        self.assertTrue(is_empty_batch(empty))
        self.assertFalse(is_empty_batch({**empty, "rooms": {"join": {"!r:x": {}}}}))
        self.assertFalse(is_empty_batch({**empty, "to_device": {"events": [{"type": "m"}]}}))
        self.assertFalse(is_empty_batch({**empty, "device_lists": {"changed": ["@a:x"]}}))

    def test_ack_is_cumulative_and_checked(self) -> None:
        async def send(batch: dict[str, Any]) -> bool:
            return True

        stream = SyncPushStream(None, "@a:x", "D", SyncToken.parse("s1_0"),  # type: ignore[arg-type]
                                SyncFilter.parse({}), False, send)
        stream.in_flight = ["s2_0", "s3_0"]
        self.assertFalse(stream.ack("s9_0"))
        self.assertTrue(stream.ack("s1_0"))  # the starting point: a harmless repeat
        self.assertTrue(stream.ack("s3_0"))
        self.assertEqual(stream.in_flight, [])
        self.assertEqual(str(stream.acked), "s3_0_0_0_0_0_0")
        self.assertFalse(stream.ack("s2_0"))
