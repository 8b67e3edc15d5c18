"""GET /rooms/{roomId}/context/{eventId}, /members, /joined_members and
/v1/rooms/{roomId}/timestamp_to_event, with history visibility and bad input."""

from __future__ import annotations

import json
from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"
V1 = "/_matrix/client/v1"


def bodies(events: list[dict]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


class ContextTest(RoomTestCase):
    async def context(self, token: str, room: str, event_id: str, **params: Any) -> Any:
        query = "&".join(f"{k}={q(str(v))}" for k, v in params.items())
        return await self.request(
            "GET", f"{CS}/rooms/{q(room)}/context/{q(event_id)}?{query}", token=token)

    async def test_context_around_event(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, name="Ctx")
        ids = [await self.send_ok(alice, room, f"m{i}") for i in range(10)]
        resp = await self.context(alice, room, ids[5], limit=4)
        self.assertEqual(resp.code, 200, resp)
        body = resp.json
        self.assertEqual(body["event"]["event_id"], ids[5])
        self.assertEqual(bodies(body["events_before"]), ["m4", "m3"])
        self.assertEqual(bodies(body["events_after"]), ["m6", "m7"])
        state_types = {e["type"] for e in body["state"]}
        self.assertTrue({"m.room.create", "m.room.member", "m.room.name"} <= state_types)
        # The tokens continue with /messages on either side.
        older = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=2&from={q(body['start'])}",
            token=alice)
        self.assertEqual(bodies(older.json["chunk"]), ["m2", "m1"])
        newer = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/messages?dir=f&limit=5&from={q(body['end'])}",
            token=alice)
        self.assertEqual(bodies(newer.json["chunk"]), ["m8", "m9"])
        # Default limit and limit 0.
        default = (await self.context(alice, room, ids[5])).json
        self.assertEqual(len(default["events_before"]), 5)
        self.assertEqual(len(default["events_after"]), 4)
        zero = (await self.context(alice, room, ids[5], limit=0)).json
        self.assertEqual((zero["events_before"], zero["events_after"]), ([], []))
        self.assertEqual(zero["event"]["event_id"], ids[5])

    async def test_filter_and_lazy_members(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.send(alice, room, event_type="m.other", content={"n": 1})
        target = await self.send_ok(bob, room, "target")
        await self.send(alice, room, event_type="m.other", content={"n": 2})
        await self.send_ok(alice, room, "after")
        filt = json.dumps({"types": ["m.room.message", "m.room.member"],
                           "lazy_load_members": True})
        body = (await self.context(alice, room, target, limit=4, filter=filt)).json
        self.assertNotIn("m.other", {e["type"] for e in body["events_before"] + body["events_after"]})
        self.assertEqual(bodies(body["events_after"]), ["after"])
        self.assertEqual({e["state_key"] for e in body["state"]}, {ALICE, BOB})
        # The filter does not apply to the event itself.
        other = (await self.context(alice, room, target, filter=json.dumps(
            {"types": ["nothing"]}))).json
        self.assertEqual(other["event"]["event_id"], target)

    async def test_visibility(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        hidden = await self.send_ok(alice, room, "before bob")
        await self.join(bob, room)
        first = await self.send_ok(alice, room, "after bob")
        resp = await self.context(bob, room, hidden)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        body = (await self.context(bob, room, first, limit=20)).json
        self.assertNotIn("before bob", bodies(body["events_before"]))
        self.assertEqual(body["events_before"][0]["state_key"], BOB)
        # A non-member may not read the room: 403 before any lookup (as Synapse and
        # SyTest's 50context.pl), so the answer is no hint that the event exists.
        resp = await self.context(carol, room, first)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.context(carol, room, "$unknown")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Bob leaves: nothing after that is visible to him.
        await self.member(bob, room, "leave")
        later = await self.send_ok(alice, room, "after bob left")
        self.assertMatrixError(await self.context(bob, room, later), 404, "M_NOT_FOUND")
        body = (await self.context(bob, room, first, limit=20)).json
        self.assertNotIn("after bob left", bodies(body["events_after"]))
        self.assertEqual(body["events_after"][-1]["content"]["membership"], "leave")

    async def test_bad_input(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        other = await self.create_room(alice)
        event = await self.send_ok(alice, room, "x")
        elsewhere = await self.send_ok(alice, other, "y")
        self.assertMatrixError(await self.context(alice, room, "$nope:test.local"), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.context(alice, room, elsewhere), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.context(alice, room, "nodollar"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.context(alice, "!unknown:test.local", event), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.context(alice, "badroom", event), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.context(alice, room, event, limit=-1), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.context(alice, room, event, filter="{"), 400,
                               "M_NOT_JSON")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/context/{q(event)}")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class MembersTest(RoomTestCase):
    async def members(self, token: str, room: str, **params: Any) -> Any:
        query = "&".join(f"{k}={q(str(v))}" for k, v in params.items())
        return await self.request("GET", f"{CS}/rooms/{q(room)}/members?{query}", token=token)

    @staticmethod
    def who(resp: Any) -> dict[str, str]:
        return {e["state_key"]: e["content"]["membership"] for e in resp.json["chunk"]}

    async def test_members_and_filters(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.member(alice, room, "invite", user_id=CAROL)
        resp = await self.members(alice, room)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(self.who(resp), {ALICE: "join", BOB: "join", CAROL: "invite"})
        for e in resp.json["chunk"]:
            self.assertEqual(e["type"], "m.room.member")
            self.assertEqual(e["room_id"], room)
        self.assertEqual(self.who(await self.members(alice, room, membership="invite")),
                         {CAROL: "invite"})
        self.assertEqual(set(self.who(await self.members(alice, room, not_membership="invite"))),
                         {ALICE, BOB})
        both = await self.members(alice, room, membership="join", not_membership="invite")
        self.assertEqual(set(self.who(both)), {ALICE, BOB})

    async def test_at_token(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        before = (await self.sync(alice))["next_batch"]
        await self.join(bob, room)
        self.assertEqual(set(self.who(await self.members(alice, room, at=before))), {ALICE})
        self.assertEqual(set(self.who(await self.members(alice, room))), {ALICE, BOB})
        # A prev_batch token works too.
        synced = await self.sync(alice)
        prev = synced["rooms"]["join"][room]["timeline"]["prev_batch"]
        self.assertEqual((await self.members(alice, room, at=prev)).code, 200)
        # Bob (joined now, shared history) can look back; with "joined" history he
        # could not see the room before his join.
        self.assertEqual(set(self.who(await self.members(bob, room, at=before))), {ALICE})
        private = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, private, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        before = (await self.sync(alice))["next_batch"]
        await self.join(bob, private)
        resp = await self.members(bob, private, at=before)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertEqual(set(self.who(await self.members(bob, private))), {ALICE, BOB})
        self.assertEqual((await self.members(alice, room, at="t0")).json, {"chunk": []})

    async def test_left_user_gets_members_at_leave(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.member(bob, room, "leave")
        await self.join(carol, room)
        self.assertEqual(self.who(await self.members(bob, room)), {ALICE: "join", BOB: "leave"})
        # Even with a later token.
        later = (await self.sync(alice))["next_batch"]
        self.assertEqual(set(self.who(await self.members(bob, room, at=later))), {ALICE, BOB})
        self.assertEqual(set(self.who(await self.members(carol, room))), {ALICE, BOB, CAROL})

    async def test_access_and_bad_input(self) -> None:
        alice = await self.user("alice")
        carol = await self.user("carol")
        room = await self.create_room(alice)
        self.assertMatrixError(await self.members(carol, room), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.members(alice, "!nope:test.local"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.members(alice, "nope"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.members(alice, room, membership="joined"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.members(alice, room, not_membership="x"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.members(alice, room, at="yesterday"), 400,
                               "M_INVALID_PARAM")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/members")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class JoinedMembersTest(RoomTestCase):
    async def joined(self, token: str, room: str) -> Any:
        return await self.request("GET", f"{CS}/rooms/{q(room)}/joined_members", token=token)

    async def test_profiles(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        await self.request("PUT", f"{CS}/profile/{q(ALICE)}/displayname",
                           {"displayname": "Alice A."}, token=alice)
        await self.request("PUT", f"{CS}/profile/{q(ALICE)}/avatar_url",
                           {"avatar_url": "mxc://test.local/alice"}, token=alice)
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        resp = await self.joined(alice, room)
        self.assertEqual(resp.code, 200, resp)
        joined = resp.json["joined"]
        self.assertEqual(joined[ALICE], {"display_name": "Alice A.",
                                         "avatar_url": "mxc://test.local/alice"})
        # An unset key is left out (the spec's schema has no null).
        self.assertNotIn("avatar_url", joined[BOB])
        for entry in joined.values():
            for value in entry.values():
                self.assertIsInstance(value, str)
        await self.member(bob, room, "leave")
        self.assertEqual(set((await self.joined(alice, room)).json["joined"]), {ALICE})
        # Only current members (as Synapse): bob left.
        self.assertMatrixError(await self.joined(bob, room), 403, "M_FORBIDDEN")

    async def test_access(self) -> None:
        alice = await self.user("alice")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        self.assertMatrixError(await self.joined(carol, room), 403, "M_FORBIDDEN")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        self.assertEqual(set((await self.joined(carol, room)).json["joined"]), {ALICE})
        self.assertMatrixError(await self.joined(alice, "!x:test.local"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.joined(alice, "x"), 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/joined_members")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class TimestampToEventTest(RoomTestCase):
    async def lookup(self, token: str, room: str, **params: Any) -> Any:
        query = "&".join(f"{k}={q(str(v))}" for k, v in params.items())
        return await self.request(
            "GET", f"{V1}/rooms/{q(room)}/timestamp_to_event?{query}", token=token)

    async def test_lookup(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        self.advance(10)
        first = await self.send_ok(alice, room, "first")
        self.advance(10)
        middle = self.clock.time_msec()
        self.advance(10)
        second = await self.send_ok(alice, room, "second")
        resp = await self.lookup(alice, room, ts=middle, dir="f")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["event_id"], second)
        self.assertIsInstance(resp.json["origin_server_ts"], int)
        self.assertGreaterEqual(resp.json["origin_server_ts"], middle)
        resp = await self.lookup(alice, room, ts=middle, dir="b")
        self.assertEqual(resp.json["event_id"], first)
        self.assertMatrixError(await self.lookup(alice, room, ts=middle + 60_000, dir="f"), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.lookup(alice, room, ts=0, dir="b"), 404, "M_NOT_FOUND")

    async def test_visibility(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        self.advance(10)
        await self.send_ok(alice, room, "before bob")
        self.advance(10)
        between = self.clock.time_msec()
        self.advance(10)
        await self.join(bob, room)
        # Bob cannot find what was sent before he joined, only from his join on (and
        # the room's set-up, from when it was "shared": the switch to "joined" last).
        back = await self.lookup(bob, room, ts=between, dir="b")
        event = await self.get_event(bob, room, back.json["event_id"])
        self.assertEqual(event.json["content"], {"history_visibility": "joined"})
        found = await self.lookup(bob, room, ts=between, dir="f")
        event = await self.get_event(bob, room, found.json["event_id"])
        self.assertEqual(event.json["state_key"], BOB)
        self.assertMatrixError(await self.lookup(carol, room, ts=between, dir="f"), 403,
                               "M_FORBIDDEN")

    async def test_bad_input(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        self.assertMatrixError(await self.lookup(alice, room, dir="f"), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.lookup(alice, room, ts=1), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.lookup(alice, room, ts=1, dir="x"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.lookup(alice, room, ts="soon", dir="f"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.lookup(alice, room, ts=-5, dir="f"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.lookup(alice, room, ts=2**64, dir="f"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.lookup(alice, "!x:test.local", ts=1, dir="f"), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.lookup(alice, "x", ts=1, dir="f"), 400,
                               "M_INVALID_PARAM")
        resp = await self.request("GET", f"{V1}/rooms/{q(room)}/timestamp_to_event?ts=1&dir=f")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
