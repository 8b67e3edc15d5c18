"""GET /sync: initial, incremental, long-poll wake-up, filters."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


class SyncTest(RoomTestCase):
    async def test_initial_and_incremental(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, name="Room")
        await self.send_ok(alice, room, "one")
        first = await self.sync(alice)
        for key in ("account_data", "presence", "to_device", "device_lists", "rooms"):
            self.assertIn(key, first)
        joined = first["rooms"]["join"][room]
        bodies = [e["content"].get("body") for e in joined["timeline"]["events"]]
        self.assertEqual(bodies[-1], "one")
        self.assertIn("prev_batch", joined["timeline"])
        types = {e["type"] for e in joined["state"]["events"]} | {
            e["type"] for e in joined["timeline"]["events"]}
        self.assertIn("m.room.create", types)
        self.assertEqual(joined["summary"]["m.joined_member_count"], 1)
        for e in joined["timeline"]["events"]:
            self.assertNotIn("room_id", e)
        # Nothing new: the room is absent.
        again = await self.sync(alice, first["next_batch"])
        self.assertNotIn(room, again["rooms"]["join"])
        await self.send_ok(alice, room, "two")
        inc = await self.sync(alice, first["next_batch"])
        events = inc["rooms"]["join"][room]["timeline"]["events"]
        self.assertEqual([e["content"]["body"] for e in events], ["two"])
        self.assertFalse(inc["rooms"]["join"][room]["timeline"]["limited"])

    async def test_limited_timeline(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        first = await self.sync(alice)
        for i in range(15):
            await self.send_ok(alice, room, f"m{i}")
        inc = await self.sync(alice, first["next_batch"])
        timeline = inc["rooms"]["join"][room]["timeline"]
        self.assertTrue(timeline["limited"])
        self.assertEqual(len(timeline["events"]), 10)
        self.assertEqual(timeline["events"][-1]["content"]["body"], "m14")
        filt = json.dumps({"room": {"timeline": {"limit": 3}}})
        small = await self.sync(alice, first["next_batch"], filter=filt)
        self.assertEqual(len(small["rooms"]["join"][room]["timeline"]["events"]), 3)

    async def test_invite_and_leave_sections(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, name="Secret")
        start = await self.sync(bob)
        await self.member(alice, room, "invite", user_id=BOB)
        inc = await self.sync(bob, start["next_batch"])
        invite = inc["rooms"]["invite"][room]["invite_state"]["events"]
        self.assertIn(("m.room.member", BOB), {(e["type"], e["state_key"]) for e in invite})
        self.assertIn("m.room.name", {e["type"] for e in invite})
        await self.join(bob, room)
        joined = await self.sync(bob, inc["next_batch"])
        self.assertIn(room, joined["rooms"]["join"])
        await self.member(alice, room, "kick", user_id=BOB)
        left = await self.sync(bob, joined["next_batch"])
        self.assertIn(room, left["rooms"]["leave"])

    async def test_long_poll_wakes_on_send(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        start = await self.sync(bob)
        waiting = defer.ensureDeferred(self.sync(bob, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.send_ok(alice, room, "wake up")
        result = await waiting
        events = result["rooms"]["join"][room]["timeline"]["events"]
        self.assertEqual(events[-1]["content"]["body"], "wake up")

    async def test_long_poll_times_out_empty(self) -> None:
        alice = await self.user("alice")
        start = await self.sync(alice)
        waiting = defer.ensureDeferred(self.sync(alice, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.advance(31)
        result = await waiting
        self.assertEqual(result["rooms"]["join"], {})

    async def test_account_data_in_sync(self) -> None:
        alice = await self.user("alice")
        start = await self.sync(alice)
        await self.request("PUT", f"{CS}/user/{ALICE}/account_data/org.example.x", {"a": 1},
                           token=alice)
        inc = await self.sync(alice, start["next_batch"])
        self.assertIn({"type": "org.example.x", "content": {"a": 1}},
                      inc["account_data"]["events"])

    async def test_bad_sync_params(self) -> None:
        alice = await self.user("alice")
        for query in ("since=garbage", "filter=999", "filter=%7Bnope", "timeout=abc",
                      "set_presence=busy", "full_state=maybe"):
            resp = await self.request("GET", f"{CS}/sync?{query}", token=alice)
            self.assertEqual(resp.code, 400, (query, resp))
        resp = await self.request("GET", f"{CS}/sync")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_lazy_loading_members(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.join(carol, room)
        for _ in range(12):
            await self.send_ok(bob, room, "bob talks")
        filt = json.dumps({"room": {"state": {"lazy_load_members": True},
                                    "timeline": {"limit": 5}}})
        result = await self.sync(alice, filter=filt)
        members = {e["state_key"] for e in result["rooms"]["join"][room]["state"]["events"]
                   if e["type"] == "m.room.member"}
        self.assertIn(BOB, members)
        self.assertNotIn("@carol:test.local", members)
        del carol


class SyncWakeupTest(RoomTestCase):
    async def test_unrelated_activity_does_not_end_the_long_poll(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice)
        start = await self.sync(bob)
        waiting = defer.ensureDeferred(self.sync(bob, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        for i in range(3):
            await self.send_ok(alice, room, f"not for bob {i}")
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(waiting.called)
        self.advance(31)
        result = await waiting
        self.assertEqual(result["rooms"]["join"], {})


class PushRulesInSyncTest(RoomTestCase):
    async def test_push_rules_in_initial_and_after_change(self) -> None:
        alice = await self.user("alice")
        first = await self.sync(alice)
        types = {e["type"]: e["content"] for e in first["account_data"]["events"]}
        self.assertIn("m.push_rules", types)
        self.assertIn("override", types["m.push_rules"]["global"])
        again = await self.sync(alice, first["next_batch"])
        self.assertNotIn("m.push_rules", {e["type"] for e in again["account_data"]["events"]})
        resp = await self.request("PUT", f"{CS}/pushrules/global/content/mine",
                                  {"pattern": "cake", "actions": ["notify"]}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        changed = await self.sync(alice, first["next_batch"])
        rules = {e["type"]: e["content"] for e in changed["account_data"]["events"]}
        self.assertIn("mine", [r["rule_id"] for r in rules["m.push_rules"]["global"]["content"]])
        direct = await self.request("GET", f"{CS}/user/{ALICE}/account_data/m.push_rules",
                                    token=alice)
        self.assertEqual(direct.code, 200)
        self.assertIn("global", direct.json)


class EventFieldsTest(RoomTestCase):
    async def test_event_fields_cut_room_events_down(self) -> None:
        """A filter's event_fields (dot-separated paths, ``\\.`` a literal dot) keep only
        those fields of the timeline and state events, in initial, incremental and
        left-room sections; the events themselves are unchanged for other filters."""
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat", name="a room")
        original = await self.send_ok(alice, room, "hello")
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/fields-edit",
            {"msgtype": "m.text", "body": "* hi", "m.new_content": {"msgtype": "m.text",
                                                                    "body": "hi"},
             "m.relates_to": {"rel_type": "m.replace", "event_id": original}}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        fields = json.dumps({"event_fields": ["type", "content.body",
                                              "content.m\\.new_content", "unsigned.age"]})
        first = await self.sync(alice, filter=fields)
        joined = first["rooms"]["join"][room]
        events = joined["timeline"]["events"] + joined["state"]["events"]
        self.assertTrue(events)
        for e in events:
            self.assertLessEqual(set(e), {"type", "content", "unsigned"}, e)
            self.assertLessEqual(set(e.get("content", {})), {"body", "m.new_content"}, e)
        messages = [e["content"] for e in joined["timeline"]["events"]
                    if e["type"] == "m.room.message"]
        self.assertEqual(messages[0], {"body": "hello"})
        self.assertEqual(messages[1], {"body": "* hi",  # a literal dot in the key
                                       "m.new_content": {"msgtype": "m.text", "body": "hi"}})
        await self.send_ok(alice, room, "again")
        later = await self.sync(alice, first["next_batch"], filter=fields)
        self.assertEqual(later["rooms"]["join"][room]["timeline"]["events"][-1],
                         {"type": "m.room.message", "content": {"body": "again"},
                          "unsigned": later["rooms"]["join"][room]["timeline"]["events"][-1]
                          ["unsigned"]})
        plain = await self.sync(alice)  # another filter: whole events, nothing lost
        whole = plain["rooms"]["join"][room]["timeline"]["events"][-1]
        self.assertIn("event_id", whole)
        self.assertEqual(whole["content"], {"msgtype": "m.text", "body": "again"})
