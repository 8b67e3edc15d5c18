"""GET /rooms/{roomId}/messages: paging both ways, tokens from /sync, stability while
events arrive, filters, lazy-loaded members, history visibility and bad input."""

from __future__ import annotations

import json
from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


class MessagesTestCase(RoomTestCase):
    async def messages(self, token: str, room: str, expect: int = 200, **params: Any) -> Any:
        query = "&".join(f"{k}={q(str(v))}" for k, v in params.items())
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?{query}", token=token)
        self.assertEqual(resp.code, expect, resp)
        return resp.json if expect == 200 else resp

    async def page_all(self, token: str, room: str, **params: Any) -> list[dict]:
        """Follow ``end`` until it is omitted; returns every event seen, in order."""
        seen: list[dict] = []
        for _ in range(100):
            page = await self.messages(token, room, **params)
            seen += page["chunk"]
            if "end" not in page:
                return seen
            params["from"] = page["end"]
        self.fail("pagination did not finish")

    @staticmethod
    def bodies(events: list[dict]) -> list[str]:
        return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


class PagingTest(MessagesTestCase):
    async def test_backwards_then_forwards(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, name="History")
        for i in range(25):
            await self.send_ok(alice, room, f"m{i}")
        first = await self.messages(alice, room, dir="b", limit=10)
        self.assertEqual(self.bodies(first["chunk"]), [f"m{i}" for i in range(24, 14, -1)])
        self.assertIn("end", first)
        self.assertTrue(first["start"].startswith("t"))
        everything = await self.page_all(alice, room, dir="b", limit=10)
        self.assertEqual(self.bodies(everything), [f"m{i}" for i in range(24, -1, -1)])
        ids = [e["event_id"] for e in everything]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(everything[-1]["type"], "m.room.create")
        for e in everything:
            self.assertEqual(e["room_id"], room)
            self.assertIn("unsigned", e)
        # Forwards from the start is the same history, oldest first.
        forwards = await self.page_all(alice, room, dir="f", limit=7)
        self.assertEqual([e["event_id"] for e in forwards], list(reversed(ids)))
        # The last backwards page had fewer events than asked: no `end` there.
        last = await self.messages(alice, room, dir="b", limit=1000)
        self.assertNotIn("end", last)
        self.assertEqual(len(last["chunk"]), len(ids))

    async def test_sync_tokens(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for i in range(8):
            await self.send_ok(alice, room, f"m{i}")
        filt = json.dumps({"room": {"timeline": {"limit": 3}}})
        synced = await self.sync(alice, filter=filt)
        timeline = synced["rooms"]["join"][room]["timeline"]
        self.assertEqual(self.bodies(timeline["events"]), ["m5", "m6", "m7"])
        older = await self.messages(alice, room, dir="b", limit=3, **{"from": timeline["prev_batch"]})
        self.assertEqual(self.bodies(older["chunk"]), ["m4", "m3", "m2"])
        self.assertEqual(older["start"], timeline["prev_batch"])
        # next_batch is accepted as `from` too: the newest events, then nothing forwards.
        newest = await self.messages(alice, room, dir="b", limit=2, **{"from": synced["next_batch"]})
        self.assertEqual(self.bodies(newest["chunk"]), ["m7", "m6"])
        ahead = await self.messages(alice, room, dir="f", **{"from": synced["next_batch"]})
        self.assertEqual(ahead["chunk"], [])
        self.assertNotIn("end", ahead)
        await self.send_ok(alice, room, "m8")
        ahead = await self.messages(alice, room, dir="f", **{"from": synced["next_batch"]})
        self.assertEqual(self.bodies(ahead["chunk"]), ["m8"])
        self.assertIn("end", ahead)
        # `to` stops at a token: between prev_batch and next_batch is the timeline.
        between = await self.messages(alice, room, dir="f", **{"from": timeline["prev_batch"],
                                                              "to": synced["next_batch"]})
        self.assertEqual(self.bodies(between["chunk"]), ["m5", "m6", "m7"])
        self.assertNotIn("end", between)
        back = await self.messages(alice, room, dir="b", **{"from": synced["next_batch"],
                                                           "to": timeline["prev_batch"]})
        self.assertEqual(self.bodies(back["chunk"]), ["m7", "m6", "m5"])
        self.assertNotIn("end", back)

    async def test_stable_while_events_arrive(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for i in range(12):
            await self.send_ok(alice, room, f"old{i}")
        seen: list[dict] = []
        params: dict[str, Any] = {"dir": "b", "limit": 4}
        for n in range(50):
            page = await self.messages(alice, room, **params)
            seen += page["chunk"]
            await self.send_ok(alice, room, f"new{n}")
            if "end" not in page:
                break
            params["from"] = page["end"]
        bodies = self.bodies(seen)
        self.assertEqual(bodies, [f"old{i}" for i in range(11, -1, -1)])
        ids = [e["event_id"] for e in seen]
        self.assertEqual(len(ids), len(set(ids)))
        # Forwards while events arrive: each exactly once, in order.
        params = {"dir": "f", "limit": 5}
        forward: list[dict] = []
        for n in range(100):
            page = await self.messages(alice, room, **params)
            forward += page["chunk"]
            if n < 3:
                await self.send_ok(alice, room, f"late{n}")
            if "end" not in page:
                break
            params["from"] = page["end"]
        fbodies = self.bodies(forward)
        self.assertEqual(len(fbodies), len(set(fbodies)))
        self.assertEqual(fbodies[-3:], ["late0", "late1", "late2"])
        self.assertEqual(fbodies[:12], [f"old{i}" for i in range(12)])
        # Every event of the room is seen once.
        everything = await self.page_all(alice, room, dir="b", limit=1000)
        self.assertEqual(sorted(e["event_id"] for e in forward),
                         sorted(e["event_id"] for e in everything))

    async def test_limits(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.send_ok(alice, room, "x")
        default = await self.messages(alice, room, dir="b")
        self.assertLessEqual(len(default["chunk"]), 10)
        big = await self.messages(alice, room, dir="b", limit=5000)
        self.assertNotIn("end", big)
        zero = await self.messages(alice, room, dir="b", limit=0)
        self.assertEqual(zero["chunk"], [])


class FilterTest(MessagesTestCase):
    async def test_event_filters(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.send_ok(alice, room, "from alice")
        await self.send_ok(bob, room, "from bob")
        resp = await self.send(alice, room, content={"msgtype": "m.image", "body": "pic",
                                                     "url": "mxc://test.local/abc"})
        self.assertEqual(resp.code, 200)
        await self.send(bob, room, event_type="m.custom", content={"x": 1})

        async def chunk(filt: dict) -> list[dict]:
            page = await self.messages(alice, room, dir="b", limit=50, filter=json.dumps(filt))
            return page["chunk"]

        self.assertEqual({e["type"] for e in await chunk({"types": ["m.room.message"]})},
                         {"m.room.message"})
        self.assertNotIn("m.room.message",
                         {e["type"] for e in await chunk({"not_types": ["m.room.*"]})})
        self.assertEqual({e["sender"] for e in await chunk({"senders": [BOB]})}, {BOB})
        self.assertNotIn(BOB, {e["sender"] for e in await chunk({"not_senders": [BOB]})})
        with_url = await chunk({"contains_url": True})
        self.assertEqual(self.bodies(with_url), ["pic"])
        self.assertNotIn("pic", self.bodies(await chunk({"contains_url": False})))
        self.assertEqual(await chunk({"not_rooms": [room]}), [])
        self.assertEqual(await chunk({"rooms": ["!other:test.local"]}), [])
        self.assertTrue(await chunk({"rooms": [room]}))

    async def test_filter_and_limit_together(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for i in range(6):
            await self.send_ok(alice, room, f"m{i}")
            await self.send(alice, room, event_type="m.other", content={"i": i})
        filt = json.dumps({"types": ["m.room.message"]})
        seen = await self.page_all(alice, room, dir="b", limit=2, filter=filt)
        self.assertEqual(self.bodies(seen), [f"m{i}" for i in range(5, -1, -1)])

    async def test_lazy_load_members(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.join(carol, room)
        await self.send_ok(carol, room, "old from carol")
        await self.send_ok(bob, room, "from bob")
        await self.send_ok(alice, room, "from alice")
        filt = json.dumps({"lazy_load_members": True, "types": ["m.room.message"]})
        page = await self.messages(alice, room, dir="b", limit=2, filter=filt)
        self.assertEqual(self.bodies(page["chunk"]), ["from alice", "from bob"])
        members = {e["state_key"] for e in page["state"] if e["type"] == "m.room.member"}
        self.assertEqual(members, {ALICE, BOB})
        # Without lazy loading there is no state section (as Synapse).
        plain = await self.messages(alice, room, dir="b", limit=2)
        self.assertNotIn("state", plain)


class VisibilityTest(MessagesTestCase):
    async def test_joined_visibility_hides_earlier_history(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.put_state(alice, room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200)
        await self.send_ok(alice, room, "before bob")
        await self.join(bob, room)
        await self.send_ok(alice, room, "after bob")
        seen = await self.page_all(bob, room, dir="b", limit=1)
        self.assertEqual(self.bodies(seen), ["after bob"])
        self.assertEqual(seen[1]["type"], "m.room.member")
        self.assertEqual(seen[1]["state_key"], BOB)
        # What came before the switch to "joined" was "shared" (bob is joined now), so
        # the room's set-up is visible, and the switch itself, but nothing after it.
        hv = [e for e in seen if e["type"] == "m.room.history_visibility"]
        self.assertEqual(hv[0]["content"], {"history_visibility": "joined"})
        # One request suffices: `end` is omitted where bob's view of history starts.
        page = await self.messages(bob, room, dir="b", limit=10)
        self.assertNotIn("end", page)
        forwards = await self.page_all(bob, room, dir="f", limit=3)
        self.assertEqual(self.bodies(forwards), ["after bob"])
        # Alice sees everything.
        self.assertEqual(self.bodies(await self.page_all(alice, room, dir="b")),
                         ["after bob", "before bob"])

    async def test_shared_visibility_shows_earlier_history_to_members(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.send_ok(alice, room, "before bob")
        await self.join(bob, room)
        self.assertEqual(self.bodies(await self.page_all(bob, room, dir="b")), ["before bob"])

    async def test_left_user_sees_nothing_after_leaving(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.send_ok(alice, room, "while bob was here")
        resp = await self.member(bob, room, "leave")
        self.assertEqual(resp.code, 200)
        await self.send_ok(alice, room, "after bob left")
        back = await self.page_all(bob, room, dir="b", limit=2)
        self.assertEqual(back[0]["type"], "m.room.member")
        self.assertEqual(back[0]["content"]["membership"], "leave")
        self.assertEqual(self.bodies(back), ["while bob was here"])
        forwards = await self.page_all(bob, room, dir="f", limit=2)
        self.assertEqual(self.bodies(forwards), ["while bob was here"])
        self.assertEqual(forwards[-1]["content"]["membership"], "leave")
        # A token past the leave shows nothing either.
        synced = await self.sync(alice)
        later = await self.messages(bob, room, dir="b", **{"from": synced["next_batch"]})
        self.assertNotIn("after bob left", self.bodies(later["chunk"]))

    async def test_non_member_and_world_readable(self) -> None:
        alice = await self.user("alice")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.send_ok(alice, room, "shared only")
        resp = await self.messages(carol, room, expect=403, dir="b")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        await self.send_ok(alice, room, "for everyone")
        page = await self.messages(carol, room, dir="b")
        # What was sent while the room was "shared" stays hidden from non-members.
        self.assertEqual(self.bodies(page["chunk"]), ["for everyone"])

    async def test_invited_user_forbidden(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, invite=[BOB])
        resp = await self.messages(bob, room, expect=403, dir="b")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class BadInputTest(MessagesTestCase):
    async def test_bad_parameters(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        path = f"{CS}/rooms/{q(room)}/messages"
        cases = [
            ("", 400, "M_MISSING_PARAM"),
            ("dir=x", 400, "M_INVALID_PARAM"),
            ("dir=b&limit=-1", 400, "M_INVALID_PARAM"),
            ("dir=b&limit=ten", 400, "M_INVALID_PARAM"),
            ("dir=b&from=garbage", 400, "M_INVALID_PARAM"),
            ("dir=b&from=t12-34_5", 400, "M_INVALID_PARAM"),
            ("dir=b&from=t99999999999999999999999", 400, "M_INVALID_PARAM"),
            ("dir=f&to=s", 400, "M_INVALID_PARAM"),
            ("dir=b&filter=nope", 400, "M_NOT_JSON"),
            ("dir=b&filter=" + "%5B" * 5000, 400, "M_NOT_JSON"),
            ("dir=b&filter=%5B%5D", 400, "M_BAD_JSON"),
            ("dir=b&filter=" + q('{"types": "m.room.message"}'), 400, "M_BAD_JSON"),
            ("dir=b&filter=" + q('{"contains_url": "yes"}'), 400, "M_BAD_JSON"),
            ("dir=b&filter=" + q('{"senders": ["nobody"]}'), 400, "M_INVALID_PARAM"),
        ]
        for query, code, errcode in cases:
            resp = await self.request("GET", f"{path}?{query}", token=alice)
            self.assertMatrixError(resp, code, errcode)
        resp = await self.request("GET", f"{CS}/rooms/{q('nope')}/messages?dir=b", token=alice)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{CS}/rooms/{q('!unknown:test.local')}/messages?dir=b",
                                  token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{path}?dir=b")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        # A token from the far future is clamped to now, not a 500.
        ok = await self.messages(alice, room, dir="b", **{"from": "t999999999999"})
        self.assertTrue(ok["chunk"])
        ok = await self.messages(alice, room, dir="f", **{"from": "s999999999999_1_2"})
        self.assertEqual(ok["chunk"], [])
