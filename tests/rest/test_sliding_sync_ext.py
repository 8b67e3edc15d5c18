"""Simplified sliding sync (MSC4186) extensions: to_device, e2ee, account_data,
receipts, typing; and the bounds on per-connection memory."""

from __future__ import annotations

import tracemalloc
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.handlers import sliding_sync_types as types
from homeserver.handlers.sliding_sync_types import ConnectionStore, PositionState, SentRoom
from homeserver.handlers.sync import SyncToken
from homeserver.http.errors import MatrixError
from tests.rest.e2e_helpers import KEYS, OlmDevice
from tests.rest.room_helpers import CS, q
from tests.rest.test_sliding_sync import ALICE, BOB, SlidingSyncCase


def ext(**enabled: dict[str, Any]) -> dict[str, Any]:
    return {name: {"enabled": True, **cfg} for name, cfg in enabled.items()}


class ExtensionsTest(SlidingSyncCase):
    async def test_to_device(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        token = bob["access_token"]
        body = {"extensions": ext(to_device={})}
        first = await self.ss(token, body)
        self.assertEqual(first["extensions"]["to_device"]["events"], [])
        since = first["extensions"]["to_device"]["next_batch"]
        resp = await self.request("PUT", f"{CS}/sendToDevice/m.room_key_request/x1",
                                  {"messages": {BOB: {bob["device_id"]: {"n": 1}}}},
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        body = {"extensions": ext(to_device={"since": since})}
        got = await self.ss(token, body, pos=first["pos"])
        section = got["extensions"]["to_device"]
        self.assertEqual([(e["sender"], e["type"], e["content"]) for e in section["events"]],
                         [(ALICE, "m.room_key_request", {"n": 1})])
        # Same since again (a retry): delivered again; the next since acknowledges it.
        again = await self.ss(token, body)
        self.assertEqual(len(again["extensions"]["to_device"]["events"]), 1)
        acked = await self.ss(token, {"extensions": ext(to_device={
            "since": section["next_batch"]})})
        self.assertEqual(acked["extensions"]["to_device"]["events"], [])
        # Not enabled: no section.
        off = await self.ss(token, {"extensions": {"to_device": {"enabled": False}}})
        self.assertNotIn("to_device", off["extensions"])

    async def test_long_poll_wakes_on_to_device(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        body = {"extensions": ext(to_device={})}
        first = await self.ss(bob["access_token"], body)
        since = first["extensions"]["to_device"]["next_batch"]
        body = {"extensions": ext(to_device={"since": since})}
        waiting = defer.ensureDeferred(self.ss(bob["access_token"], body, pos=first["pos"],
                                               timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        resp = await self.request("PUT", f"{CS}/sendToDevice/m.room_key_request/w1",
                                  {"messages": {BOB: {bob["device_id"]: {"w": 1}}}},
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        got = await waiting
        self.assertEqual([e["content"] for e in got["extensions"]["to_device"]["events"]],
                         [{"w": 1}])

    async def test_e2ee(self) -> None:
        reg = await self.register("alice")
        alice = OlmDevice(reg["user_id"], reg["device_id"], reg["access_token"])
        bob_reg = await self.register("bob")
        bob = OlmDevice(bob_reg["user_id"], bob_reg["device_id"], bob_reg["access_token"])
        room = await self.create_room(alice.token, preset="public_chat")
        await self.join(bob.token, room)
        resp = await self.request("POST", f"{KEYS}/upload", {
            "device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(4),
            "fallback_keys": alice.fallback_key()}, token=alice.token)
        self.assertEqual(resp.code, 200, resp)
        body = {"extensions": ext(e2ee={})}
        first = await self.ss(alice.token, body)
        section = first["extensions"]["e2ee"]
        self.assertEqual(section["device_one_time_keys_count"], {"signed_curve25519": 4})
        self.assertEqual(section["device_unused_fallback_key_types"], ["signed_curve25519"])
        self.assertNotIn("device_lists", section)  # nothing to compare with yet
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"device_keys": bob.device_keys()}, token=bob.token)
        self.assertEqual(resp.code, 200, resp)
        inc = await self.ss(alice.token, body, pos=first["pos"], timeout=10000)
        self.assertIn(BOB, inc["extensions"]["e2ee"]["device_lists"]["changed"])
        await self.member(bob.token, room, "leave")
        left = await self.ss(alice.token, body, pos=inc["pos"], timeout=10000)
        self.assertIn(BOB, left["extensions"]["e2ee"]["device_lists"]["left"])

    async def test_account_data(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        other = await self.create_room(alice)
        await self.request("PUT", f"{CS}/user/{q(ALICE)}/account_data/org.example.g",
                           {"a": 1}, token=alice)
        for r in (room, other):
            await self.request("PUT", f"{CS}/user/{q(ALICE)}/rooms/{q(r)}/account_data/"
                               "org.example.r", {"room": r}, token=alice)
        body = {"room_subscriptions": {room: {"timeline_limit": 0}},
                "extensions": ext(account_data={})}
        first = await self.ss(alice, body)
        section = first["extensions"]["account_data"]
        types_ = {e["type"]: e["content"] for e in section["global"]}
        self.assertEqual(types_["org.example.g"], {"a": 1})
        self.assertIn("m.push_rules", types_)
        self.assertEqual(section["rooms"], {room: [{"type": "org.example.r",
                                                   "content": {"room": room}}]})
        same = await self.ss(alice, body, pos=first["pos"])
        self.assertNotIn("account_data", same["extensions"])
        await self.request("PUT", f"{CS}/user/{q(ALICE)}/account_data/org.example.g",
                           {"a": 2}, token=alice)
        inc = await self.ss(alice, body, pos=same["pos"], timeout=10000)
        self.assertEqual(inc["extensions"]["account_data"]["global"],
                         [{"type": "org.example.g", "content": {"a": 2}}])
        # A room newly in view gets its whole room account data.
        body["room_subscriptions"][other] = {"timeline_limit": 0}
        more = await self.ss(alice, body, pos=inc["pos"])
        self.assertEqual(list(more["extensions"]["account_data"]["rooms"]), [other])

    async def test_receipts_and_typing(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        unseen = await self.create_room(alice, preset="public_chat")
        for r in (room, unseen):
            await self.join(bob, r)
        event_id = await self.send_ok(alice, room, "read me")
        other_event = await self.send_ok(alice, unseen, "elsewhere")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/"
                                  f"{q(event_id)}", {}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        await self.request("POST", f"{CS}/rooms/{q(unseen)}/receipt/m.read/"
                           f"{q(other_event)}", {}, token=bob)
        body = {"room_subscriptions": {room: {"timeline_limit": 1}},
                "extensions": ext(receipts={}, typing={})}
        first = await self.ss(alice, body)
        receipts = first["extensions"]["receipts"]["rooms"]
        self.assertEqual(list(receipts), [room])  # only rooms in view
        self.assertEqual(receipts[room]["type"], "m.receipt")
        self.assertIn(BOB, receipts[room]["content"][event_id]["m.read"])
        self.assertNotIn("typing", first["extensions"])
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(BOB)}",
                                  {"typing": True, "timeout": 30000}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        inc = await self.ss(alice, body, pos=first["pos"], timeout=10000)
        self.assertEqual(inc["extensions"]["typing"]["rooms"][room],
                         {"type": "m.typing", "content": {"user_ids": [BOB]}})
        self.assertNotIn("receipts", inc["extensions"])  # no new receipt since
        # Extension scoped to a list that does not exist: nothing.
        scoped = {"room_subscriptions": {room: {"timeline_limit": 1}},
                  "extensions": ext(receipts={"lists": ["nope"], "rooms": []})}
        none = await self.ss(alice, scoped)
        self.assertNotIn("receipts", none["extensions"])


class ConnectionBoundsTest(unittest.TestCase):
    def test_limits(self) -> None:
        self.patch(types, "MAX_CONNECTIONS_PER_DEVICE", 2)
        self.patch(types, "MAX_CONNECTIONS", 3)
        self.patch(types, "MAX_ROOMS_PER_CONNECTION", 5)
        conns = ConnectionStore()
        token = SyncToken(1, 1)

        def state(n: int) -> PositionState:
            st = PositionState(token)
            for i in range(n):
                st.rooms[f"!r{i}:x"] = SentRoom(1, "join", frozenset())
            return st

        first = conns.store("@a:x", "D", "c1", state(10))
        self.assertEqual(conns.rooms_remembered(), 5)  # capped per connection
        self.assertEqual(len(conns.lookup("@a:x", "D", "c1", first).rooms), 5)
        conns.store("@a:x", "D", "c2", state(1))
        conns.store("@a:x", "D", "c3", state(1))  # third conn_id of the device
        self.assertEqual(len(conns), 2)
        with self.assertRaises(MatrixError) as cm:
            conns.lookup("@a:x", "D", "c1", first)
        self.assertEqual(cm.exception.errcode, "M_UNKNOWN_POS")
        conns.store("@b:x", "D", "c", state(1))
        conns.store("@c:x", "D", "c", state(1))
        self.assertEqual(len(conns), 3)  # least recently used forgotten
        # Only the acknowledged and the newest positions are kept per connection.
        p1 = conns.store("@c:x", "D", "c", state(1))
        p2 = conns.store("@c:x", "D", "c", state(1))
        conns.lookup("@c:x", "D", "c", p2)
        with self.assertRaises(MatrixError):
            conns.lookup("@c:x", "D", "c", p1)

    def test_total_weight_bound(self) -> None:
        self.patch(types, "MAX_WEIGHT_TOTAL", 25)
        conns = ConnectionStore()
        token = SyncToken(1, 1)
        for user in ("@a:x", "@b:x", "@c:x"):
            st = PositionState(token)
            for i in range(10):
                st.rooms[f"!r{i}:x"] = SentRoom(1, "join", frozenset(), frozenset({user}))
            conns.store(user, "D", "c", st)
        # 20 units each: only the most recent connection fits under 25.
        self.assertEqual(len(conns), 1)
        self.assertEqual(conns.weight, 20)
        conns.lookup("@c:x", "D", "c", None)  # starting over drops it
        self.assertEqual(conns.weight, 0)

    def test_memory_per_room_measured(self) -> None:
        """What MAX_WEIGHT_TOTAL's comment assumes: under 600 bytes per unit."""
        pats = frozenset({("m.room.name", ""), ("m.room.member", "$LAZY")})
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            conns = ConnectionStore()
            st = PositionState(SyncToken(1, 1))
            for i in range(types.MAX_ROOMS_PER_CONNECTION):
                st.rooms[f"!room{i:06d}abcdefghijkl:example.org"] = SentRoom(
                    123456, "join", pats, frozenset())
            conns.store("@a:x", "D", "c", st)
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(conns.weight, types.MAX_ROOMS_PER_CONNECTION)
        self.assertLess(used / conns.weight, 600)
