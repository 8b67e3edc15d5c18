"""Push delivery to a real HTTP push gateway (a twisted.web server on a loopback port
that records every request): SyTest tests/61push/01message-pushed.pl (message, zero
badge on read, invites, room names and aliases, many users, muted rooms),
08_rejected_pushers.pl, 48admin.pl "After /purge_history users still get pushed for
new messages", plus event_id_only for encrypted messages, retries with backoff (on
the server's task.Clock), resuming after a restart, and the SSRF blocklist."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor, task
from twisted.web import resource, server

from homeserver.app import build_homeserver
from homeserver.config import parse_config
from homeserver.config.loader import ConfigError
from homeserver.push.sender.pusher import GIVE_UP_AFTER_MS
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase, q

NOTIFY = "/_matrix/push/v1/notify"
ALICE, BOB, CAROL = "@alice:test.local", "@bob:test.local", "@carol:test.local"


class Gateway(resource.Resource):
    """Records POSTed bodies; answers with ``responses`` (status, JSON) in turn, then
    ``default`` (which may depend on the body's pushkey)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.responses: list[tuple[int, dict[str, Any]]] = []
        self.rejected_keys: set[str] = set()
        self.status = 200

    def render_POST(self, request: Any) -> bytes:  # noqa: N802
        body = json.loads(request.content.read())
        self.bodies.append(body)
        self.paths.append(request.path.decode())
        if self.responses:
            code, answer = self.responses.pop(0)
        else:
            code, answer = self.status, {}
            key = body["notification"]["devices"][0]["pushkey"]
            if key in self.rejected_keys:
                answer = {"rejected": [key]}
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode()

    def of_type(self, event_type: str | None) -> list[dict[str, Any]]:
        return [b["notification"] for b in self.bodies
                if b["notification"].get("type") == event_type]


class PushGatewayTestCase(RoomTestCase):
    allowlist: list[str] = ["127.0.0.1"]

    def config_overrides(self) -> dict[str, Any]:
        return {"push": {"gateway_allowlist": self.allowlist, "timeout": 5}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.gateway = Gateway()
        port = reactor.listenTCP(0, server.Site(self.gateway), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.gw_port = port.getHost().port
        self.url = f"http://127.0.0.1:{self.gw_port}{NOTIFY}"

    async def wait_for(self, cond: Any, what: str, seconds: float = 5.0) -> None:
        for _ in range(int(seconds / 0.01)):
            if cond():
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting for {what}; gateway got {self.gateway.bodies}")

    async def settle(self) -> None:
        """Give anything in flight a moment to reach the gateway (to assert nothing did)."""
        await task.deferLater(reactor, 0.2, lambda: None)

    async def set_pusher(self, token: str, pushkey: str = "a_push_key", url: str | None = None,
                         **data: Any) -> None:
        resp = await self.request("POST", f"{CS}/pushers/set", {
            "profile_tag": "tag", "kind": "http", "app_id": "sytest",
            "app_display_name": "sytest_display_name",
            "device_display_name": "device_display_name", "pushkey": pushkey, "lang": "en",
            "data": {"url": url or self.url, **data},
        }, token=token)
        self.assertEqual(resp.code, 200, resp)

    async def pushkey_ts(self, user_id: str, pushkey: str = "a_push_key") -> int:
        pusher = await self.hs.stores.pushers.get_pusher(user_id, "sytest", pushkey)
        assert pusher is not None
        return pusher.created_ts // 1000

    async def pushed(self, count: int, what: str = "pushes") -> None:
        await self.wait_for(lambda: len(self.gateway.bodies) >= count, what)

    def metric(self, outcome: str) -> float:
        return self.hs.metrics_registry.get_sample_value(
            "parley_push_sent_total", {"outcome": outcome}) or 0.0

    async def dm(self, alice: str, bob: str, **create: Any) -> str:
        """A private room of alice (who reads up to bob's join) and bob."""
        room = await self.create_room(alice, preset="private_chat", invite=[BOB], **create)
        self.assertEqual((await self.join(bob, room)).code, 200)
        await self.read(alice, room)
        return room

    async def bobs_room(self, alice: str, bob: str) -> str:
        """As SyTest's setup_push: Bob's room, which Alice joins (and reads)."""
        room = await self.create_room(bob, preset="private_chat", invite=[ALICE])
        self.assertEqual((await self.join(alice, room)).code, 200)
        await self.read(alice, room)
        return room

    async def read(self, token: str, room: str, event_id: str | None = None) -> None:
        if event_id is None:
            body = await self.sync(token)
            event_id = body["rooms"]["join"][room]["timeline"]["events"][-1]["event_id"]
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}",
                                  {}, token=token)
        self.assertEqual(resp.code, 200, resp)
        # The pusher lookup for a badge update runs after the answer: let it finish, so
        # it cannot find a pusher set after this read.
        await self.wait_for(lambda: not self.hs.pushers.busy, "the receipt hook")  # type: ignore[union-attr]


class MessagePushTest(PushGatewayTestCase):
    async def test_message_pushed_then_zero_badge_on_read(self) -> None:
        """01message-pushed.pl "Test that a message is pushed": the exact body, then the
        counts-only badge update once Alice reads."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice)
        event_id = await self.send_ok(bob, room, "Room message for 50push-01message-pushed")
        await self.pushed(1)
        ts = await self.pushkey_ts(ALICE)
        self.assertEqual(self.gateway.paths, [NOTIFY])
        self.assertEqual(self.gateway.bodies[0], {"notification": {
            "id": event_id, "event_id": event_id, "room_id": room, "type": "m.room.message",
            "sender": BOB, "sender_display_name": "bob", "prio": "high",
            "counts": {"unread": 1},
            "content": {"msgtype": "m.text", "body": "Room message for 50push-01message-pushed"},
            "devices": [{"app_id": "sytest", "pushkey": "a_push_key", "pushkey_ts": ts,
                         "data": {}, "tweaks": {"sound": "default"}}],
        }})
        await self.read(alice, room, event_id)
        await self.pushed(2, "the badge update")
        self.assertEqual(self.gateway.bodies[1], {"notification": {
            "id": "", "type": None, "sender": "", "counts": {"unread": 0},
            "devices": [{"app_id": "sytest", "pushkey": "a_push_key", "pushkey_ts": ts,
                         "data": {}}],
        }})
        self.assertEqual(self.metric("sent"), 1)
        await self.wait_for(lambda: self.metric("badge_sent") == 1, "the badge count")
        # Reading again changes no badge: nothing more is sent.
        await self.read(alice, room, event_id)
        await self.settle()
        self.assertEqual(len(self.gateway.bodies), 2)

    async def test_own_messages_and_history_are_not_pushed(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.send_ok(bob, room, "before the pusher")
        await self.set_pusher(alice)
        await self.send_ok(alice, room, "alice's own")
        await self.settle()
        self.assertEqual(self.gateway.bodies, [])

    async def test_invites_are_pushed(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.set_pusher(alice)
        room = await self.create_room(bob, preset="private_chat")
        resp = await self.member(bob, room, "invite", user_id=ALICE)
        self.assertEqual(resp.code, 200, resp)
        await self.pushed(1)
        note = self.gateway.bodies[0]["notification"]
        self.assertEqual(note["type"], "m.room.member")
        self.assertEqual((note["membership"], note["user_is_target"]), ("invite", True))
        self.assertEqual((note["room_id"], note["sender"]), (room, BOB))
        self.assertEqual(note["content"]["membership"], "invite")
        self.assertEqual(note["counts"], {"unread": 1})  # the invite counts in the badge
        self.assertNotIn("room_name", note)

    async def test_rooms_named_and_aliased(self) -> None:
        """"Rooms with names / canonical alias are correctly named in pushes" and
        "Rooms with many users are correctly pushed"."""
        alice, bob, carol = await self.user("alice"), await self.user("bob"), \
            await self.user("carol")
        await self.set_pusher(alice)
        named = await self.bobs_room(alice, bob)
        self.assertEqual((await self.put_state(bob, named, "m.room.name",
                                               {"name": "Test Name"})).code, 200)
        await self.send_ok(bob, named, "in a named room")
        aliased = await self.bobs_room(alice, bob)
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#pushy:test.local')}",
                                  {"room_id": aliased}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.put_state(bob, aliased, "m.room.canonical_alias",
                                    {"alias": "#pushy:test.local"})
        self.assertEqual(resp.code, 200, resp)
        await self.send_ok(bob, aliased, "in an aliased room")
        many = await self.create_room(bob, preset="public_chat")
        for token in (alice, carol):
            self.assertEqual((await self.join(token, many)).code, 200)
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#many:test.local')}",
                                  {"room_id": many}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        await self.send_ok(bob, many, "in a room of three")
        self.assertEqual((await self.put_state(bob, many, "m.room.name",
                                               {"name": "Many"})).code, 200)
        await self.send_ok(bob, many, "in a named room of three")
        await self.wait_for(lambda: len(self.gateway.of_type("m.room.message")) == 4,
                            "four messages")
        names = [(n["room_id"], n.get("room_name"), n.get("room_alias"))
                 for n in self.gateway.of_type("m.room.message")]
        self.assertEqual(names, [
            (named, "Test Name", None),
            (aliased, "#pushy:test.local", "#pushy:test.local"),
            (many, "bob and carol", None),  # not the alias: it is not canonical
            (many, "Many", None),
        ])
        # The name and alias events do not notify by the default rules (m.room.member:
        # Bob's invites; None: the badge updates of Alice's receipts).
        self.assertEqual({b["notification"].get("type") for b in self.gateway.bodies},
                         {"m.room.message", "m.room.member", None})

    async def test_muted_room_is_not_pushed_except_mentions(self) -> None:
        """"Don't get pushed for rooms you've muted"."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice)
        resp = await self.request("PUT", f"{CS}/pushrules/global/room/{q(room)}",
                                  {"actions": ["dont_notify"]}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        await self.send(bob, room, content={"msgtype": "m.text", "body": "muted",
                                            "expect": False})
        await self.send(bob, room, content={"msgtype": "m.text", "body": f"hi {ALICE}",
                                            "m.mentions": {"user_ids": [ALICE]},
                                            "expect": True})
        await self.pushed(1)
        await self.settle()
        self.assertEqual([n["content"]["expect"] for n in self.gateway.of_type("m.room.message")],
                         [True])
        self.assertEqual(self.gateway.bodies[0]["notification"]["prio"], "high")

    async def test_encrypted_message_event_id_only(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice, format="event_id_only")
        resp = await self.send(bob, room, event_type="m.room.encrypted", content={
            "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAC", "sender_key": "k",
            "session_id": "s", "device_id": "D"})
        self.assertEqual(resp.code, 200, resp)
        await self.pushed(1)
        self.assertEqual(self.gateway.bodies[0], {"notification": {
            "event_id": resp.json["event_id"], "room_id": room, "prio": "high",
            "counts": {"unread": 1},
            "devices": [{"app_id": "sytest", "pushkey": "a_push_key",
                         "pushkey_ts": await self.pushkey_ts(ALICE),
                         "data": {"format": "event_id_only"}, "tweaks": {}}],
        }})

    async def test_pushed_after_purge_history(self) -> None:
        """48admin.pl "After /purge_history users still get pushed for new messages"."""
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        admin = (await self.login("admin")).json["access_token"]
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice)
        old = [await self.send_ok(bob, room, f"old {i}") for i in range(2)]
        await self.pushed(2)
        resp = await self.request("POST", f"/_synapse/admin/v1/purge_history/{q(room)}/{q(old[-1])}",
                                  {}, token=admin)
        self.assertEqual(resp.code, 200, resp)
        purge_id = resp.json["purge_id"]
        for _ in range(300):
            resp = await self.request("GET", f"/_synapse/admin/v1/purge_history_status/{purge_id}",
                                      token=admin)
            if resp.json["status"] != "active":
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(resp.json["status"], "complete")
        new = await self.send_ok(bob, room, "after the purge")
        await self.wait_for(lambda: len(self.gateway.of_type("m.room.message")) == 3, "push")
        self.assertEqual(self.gateway.of_type("m.room.message")[-1]["event_id"], new)


class RejectedPushersTest(PushGatewayTestCase):
    async def test_rejected_pushkey_removes_the_pusher(self) -> None:
        """08_rejected_pushers.pl."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice, "key_1")
        await self.set_pusher(alice, "key_2")
        await self.send_ok(bob, room, "message 1")
        await self.pushed(2)
        self.assertEqual(sorted(b["notification"]["devices"][0]["pushkey"]
                                for b in self.gateway.bodies), ["key_1", "key_2"])
        self.gateway.rejected_keys.add("key_1")
        await self.send_ok(bob, room, "message 2")
        await self.pushed(4)
        await self.wait_for(lambda: self.metric("rejected") == 1, "the rejection")
        resp = await self.request("GET", f"{CS}/pushers", token=alice)
        self.assertEqual([p["pushkey"] for p in resp.json["pushers"]], ["key_2"])
        await self.send_ok(bob, room, "message 3")
        await self.pushed(5)
        await self.settle()
        self.assertEqual([b["notification"]["devices"][0]["pushkey"]
                          for b in self.gateway.bodies[4:]], ["key_2"])


class RetryTest(PushGatewayTestCase):
    async def test_backoff_then_delivery_in_order(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice)
        self.gateway.responses = [(500, {}), (502, {})]
        first = await self.send_ok(bob, room, "first")
        await self.pushed(1)
        second = await self.send_ok(bob, room, "second")  # joins the queue: no hot loop
        await self.settle()
        self.assertEqual(len(self.gateway.bodies), 1)
        self.advance(1)  # first retry after 1 s: fails again
        await self.pushed(2)
        # The gateway has answered; wait until the worker scheduled its next try (2 s
        # from then) before moving the clock, or the clock would move before it.
        worker = self.hs.pushers.worker((ALICE, "sytest", "a_push_key"))  # type: ignore[union-attr]
        assert worker is not None
        await self.wait_for(lambda: worker.backing_off, "the second backoff")
        self.advance(1.5)  # the next waits 2 s
        await self.settle()
        self.assertEqual(len(self.gateway.bodies), 2)
        self.advance(0.5)
        await self.pushed(4)
        self.assertEqual([b["notification"]["event_id"] for b in self.gateway.bodies],
                         [first, first, first, second])
        await self.wait_for(lambda: self.metric("sent") == 2, "the count")
        self.assertEqual(self.metric("failed"), 2)
        for _ in range(500):  # the position moves just after the gateway's answer
            pusher = await self.hs.stores.pushers.get_pusher(ALICE, "sytest", "a_push_key")
            assert pusher is not None
            if pusher.failing_since is None:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertIsNone(pusher.failing_since)
        # Backoff was reset: the next message goes at once.
        await self.send_ok(bob, room, "third")
        await self.pushed(5)

    async def test_gives_up_on_a_notification_after_a_day(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice)
        self.gateway.status = 500
        stuck = await self.send_ok(bob, room, "stuck")
        await self.pushed(1)
        elapsed, attempts = 0.0, 1
        while elapsed * 1000 <= GIVE_UP_AFTER_MS:
            worker = self.hs.pushers.worker((ALICE, "sytest", "a_push_key"))  # type: ignore[union-attr]
            assert worker is not None
            await self.wait_for(lambda w=worker: w.backing_off, "the backoff")
            delay = min(2 ** (attempts - 1), 3600)
            self.advance(delay)
            elapsed += delay
            attempts += 1
            await self.pushed(attempts)
        await self.wait_for(lambda: self.metric("dropped") == 1, "the drop")
        self.gateway.status = 200
        later = await self.send_ok(bob, room, "later")
        await self.wait_for(lambda: self.gateway.bodies[-1]["notification"]["event_id"] == later,
                            "the next message")
        self.assertEqual({b["notification"]["event_id"] for b in self.gateway.bodies},
                         {stuck, later})


class RestartTest(PushGatewayTestCase):
    async def test_restart_resumes_without_skipping_or_repeating(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice)
        delivered = await self.send_ok(bob, room, "delivered")
        await self.pushed(1)
        self.gateway.status = 503
        queued = [await self.send_ok(bob, room, f"queued {i}") for i in range(3)]
        await self.pushed(2)
        await self.hs.stop()
        self.gateway.status = 200
        self.hs = await build_homeserver(self.config, clock=self.clock)
        self.base_url = f"http://127.0.0.1:{self.hs.listen(reactor)[0].getHost().port}"
        await self.pushed(5, "the queue after the restart")
        await self.settle()
        self.assertEqual([b["notification"]["event_id"] for b in self.gateway.bodies],
                         [delivered, queued[0], queued[0], queued[1], queued[2]])


class BlocklistTest(PushGatewayTestCase):
    allowlist: list[str] = []

    async def test_private_gateway_refused_unless_allow_listed(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.dm(alice, bob)
        await self.set_pusher(alice, "literal")
        await self.set_pusher(alice, "name", url=f"http://localhost:{self.gw_port}{NOTIFY}")
        await self.send_ok(bob, room, "not for a private address")
        await self.wait_for(lambda: self.metric("blocked") == 1 and self.metric("failed") == 1,
                            "both refusals")
        await self.settle()
        self.assertEqual(self.gateway.bodies, [])

    def test_config(self) -> None:
        with self.assertRaises(ConfigError):
            parse_config({**self._raw(), "push": {"gateway_allowlist": "x"}})
        with self.assertRaises(ConfigError):
            parse_config({**self._raw(), "push": {"unknown": 1}})
        config = parse_config({**self._raw(), "push": {"gateway_allowlist": ["Sygnal.LAN"],
                                                        "timeout": "2s"}})
        self.assertEqual((config.push.gateway_allowlist, config.push.timeout),
                         (["sygnal.lan"], 2.0))

    def _raw(self) -> dict[str, Any]:
        return {"server_name": "x.test", "auth": {"signing_keys": [
            {"kid": "k", "algorithm": "HS256", "key": "s" * 40}]}}
