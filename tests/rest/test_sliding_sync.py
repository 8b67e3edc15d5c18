"""Simplified sliding sync (MSC4186): lists, ranges, subscriptions, required_state,
timelines, connection positions and long-polling."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task

from tests.harness import Response
from tests.rest.room_helpers import CS, RoomTestCase, q

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"


class SlidingSyncCase(RoomTestCase):
    async def ss_raw(self, token: str, body: dict[str, Any], pos: str | None = None,
                     timeout: int = 0) -> Response:
        params = [f"timeout={timeout}"]
        if pos is not None:
            params.append(f"pos={quote(pos, safe='')}")
        return await self.request("POST", f"{SS}?{'&'.join(params)}", body, token=token)

    async def ss(self, token: str, body: dict[str, Any], pos: str | None = None,
                 timeout: int = 0) -> dict[str, Any]:
        resp = await self.ss_raw(token, body, pos, timeout)
        self.assertEqual(resp.code, 200, resp)
        self.assertIsInstance(resp.json.get("pos"), str)
        return resp.json

    @staticmethod
    def one_list(ranges: list[list[int]] | None = None, timeline_limit: int = 1,
                 required_state: list[list[str]] | None = None, **extra: Any
                 ) -> dict[str, Any]:
        return {"lists": {"all": {"ranges": ranges or [[0, 20]],
                                  "timeline_limit": timeline_limit,
                                  "required_state": required_state or [], **extra}}}

    @staticmethod
    def bodies(room: dict[str, Any]) -> list[Any]:
        return [e["content"].get("body") for e in room.get("timeline", [])
                if e["type"] == "m.room.message"]


class ListsTest(SlidingSyncCase):
    async def test_versions_advertises_it(self) -> None:
        resp = await self.request("GET", "/_matrix/client/versions")
        self.assertIs(resp.json["unstable_features"].get("org.matrix.simplified_msc3575"),
                      True)

    async def test_ranges_sorted_by_recency(self) -> None:
        alice = await self.user("alice")
        rooms = [await self.create_room(alice, name=f"R{i}") for i in range(3)]
        firsts = [await self.send_ok(alice, room, "hi") for room in rooms]
        # The oldest room gets a message; a reaction in another does not bump it.
        await self.send_ok(alice, rooms[0], "latest")
        resp = await self.send(alice, rooms[1], event_type="m.reaction", content={
            "m.relates_to": {"rel_type": "m.annotation", "event_id": firsts[1], "key": "a"}})
        self.assertEqual(resp.code, 200, resp)
        out = await self.ss(alice, self.one_list(ranges=[[0, 1]]))
        lst = out["lists"]["all"]
        self.assertEqual(lst["count"], 3)
        self.assertEqual(lst["ops"][0]["room_ids"], [rooms[0], rooms[2]])
        self.assertEqual(set(out["rooms"]), {rooms[0], rooms[2]})
        self.assertGreater(out["rooms"][rooms[0]]["bump_stamp"],
                           out["rooms"][rooms[2]]["bump_stamp"])
        self.assertEqual(self.bodies(out["rooms"][rooms[0]]), ["latest"])
        # A second range and a second list.
        body = self.one_list(ranges=[[2, 2]])
        body["lists"]["named"] = {"ranges": [[0, 0]], "timeline_limit": 0}
        out = await self.ss(alice, body)
        self.assertEqual(out["lists"]["all"]["ops"][0]["room_ids"], [rooms[1]])
        self.assertEqual(out["lists"]["named"]["ops"][0]["room_ids"], [rooms[0]])
        self.assertEqual(set(out["rooms"]), {rooms[0], rooms[1]})

    async def test_room_subscriptions(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        mine = await self.create_room(alice, name="Mine")
        other = await self.create_room(alice)
        await self.send_ok(alice, other, "newest")
        theirs = await self.create_room(bob)
        body = {"lists": {"all": {"ranges": [[0, 0]], "timeline_limit": 1}},
                "room_subscriptions": {
                    mine: {"timeline_limit": 5, "required_state": [["m.room.name", ""]]},
                    theirs: {"timeline_limit": 5}}}
        out = await self.ss(alice, body)
        self.assertEqual(out["lists"]["all"]["ops"][0]["room_ids"], [other])
        self.assertIn(mine, out["rooms"])
        self.assertNotIn(theirs, out["rooms"])  # not a member: nothing about it
        self.assertEqual([e["type"] for e in out["rooms"][mine]["required_state"]],
                         ["m.room.name"])
        self.assertEqual(out["rooms"][mine]["name"], "Mine")
        self.assertGreater(len(out["rooms"][mine]["timeline"]), 1)
        # Subscriptions stay on the connection (matrix-js-sdk sends each one once)
        # until unsubscribe_rooms.
        lists_only = {"lists": {"dms": {"ranges": [[0, 5]], "filters": {"is_dm": True}}}}
        await self.send_ok(alice, mine, "for subscribers")
        inc = await self.ss(alice, lists_only, pos=out["pos"])
        self.assertEqual(self.bodies(inc["rooms"][mine]), ["for subscribers"])
        await self.send_ok(alice, mine, "after unsubscribing")
        dropped = await self.ss(alice, {**lists_only, "unsubscribe_rooms": [mine]},
                                pos=inc["pos"])
        self.assertNotIn(mine, dropped["rooms"])

    async def test_filters(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        plain = await self.create_room(alice)
        dm = await self.create_room(alice, is_direct=True, invite=[BOB])
        await self.join(bob, dm)
        await self.request("PUT", f"{CS}/user/{q(ALICE)}/account_data/m.direct",
                           {BOB: [dm]}, token=alice)
        enc = await self.create_room(alice, initial_state=[{
            "type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        space = await self.create_room(alice, creation_content={"type": "m.space"})
        resp = await self.put_state(alice, space, "m.space.child", {"via": ["test.local"]},
                                    state_key=plain)
        self.assertEqual(resp.code, 200, resp)
        invited = await self.create_room(bob, invite=[ALICE])

        async def ids(filters: dict[str, Any]) -> set[str]:
            out = await self.ss(alice, self.one_list(filters=filters, timeline_limit=0))
            return set(out["lists"]["all"]["ops"][0]["room_ids"])

        everything = {plain, dm, enc, space, invited}
        self.assertEqual(await ids({}), everything)
        self.assertEqual(await ids({"is_dm": True}), {dm})
        self.assertEqual(await ids({"is_encrypted": True}), {enc})
        self.assertEqual(await ids({"is_invite": True}), {invited})
        self.assertEqual(await ids({"is_invite": False}), everything - {invited})
        self.assertEqual(await ids({"room_types": ["m.space"]}), {space})
        self.assertEqual(await ids({"not_room_types": ["m.space"]}), everything - {space})
        self.assertEqual(await ids({"room_types": [None], "is_invite": False}),
                         {plain, dm, enc})
        self.assertEqual(await ids({"spaces": [space]}), {plain})
        out = await self.ss(alice, self.one_list(filters={"is_dm": True}))
        self.assertIs(out["rooms"][dm].get("is_dm"), True)

    async def test_invite_state(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, name="Secret")
        await self.send_ok(alice, room, "private history")
        await self.member(alice, room, "invite", user_id=BOB)
        out = await self.ss(bob, self.one_list(timeline_limit=5,
                                               required_state=[["*", "*"]]))
        entry = out["rooms"][room]
        self.assertTrue(entry["initial"])
        self.assertEqual(entry["name"], "Secret")
        pairs = {(e["type"], e.get("state_key")) for e in entry["invite_state"]}
        self.assertIn(("m.room.member", BOB), pairs)
        self.assertIn(("m.room.name", ""), pairs)
        self.assertNotIn("timeline", entry)  # nothing of the room's history
        self.assertNotIn("required_state", entry)
        # Joining turns it into a full room, sent as initial again.
        again = await self.ss(bob, self.one_list(timeline_limit=5), pos=out["pos"])
        self.assertNotIn(room, again["rooms"])
        await self.join(bob, room)
        joined = await self.ss(bob, self.one_list(timeline_limit=5), pos=again["pos"])
        self.assertTrue(joined["rooms"][room]["initial"])
        self.assertNotIn("invite_state", joined["rooms"][room])
        self.assertEqual(joined["rooms"][room]["joined_count"], 2)

    async def test_counts_heroes_and_names(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        await self.user("carol")
        room = await self.create_room(alice, invite=[BOB, "@carol:test.local"])
        await self.join(bob, room)
        await self.request("PUT", f"{CS}/profile/{q(BOB)}/displayname",
                           {"displayname": "Bobby"}, token=bob)
        await self.put_state(alice, room, "m.room.avatar", {"url": "mxc://test.local/abc"})
        await self.send_ok(alice, room, "hello everyone")
        await self.send_ok(alice, room, "hey bob: look")
        out = await self.ss(bob, self.one_list())
        entry = out["rooms"][room]
        self.assertEqual(entry["joined_count"], 2)
        self.assertEqual(entry["invited_count"], 1)
        self.assertEqual(entry["avatar"], "mxc://test.local/abc")
        self.assertNotIn("name", entry)
        heroes = {h["user_id"]: h for h in entry["heroes"]}
        self.assertEqual(set(heroes), {ALICE, "@carol:test.local"})
        self.assertEqual(heroes[ALICE].get("displayname"), "alice")
        # The same counts as /sync (push rules: "bob" in a message highlights).
        classic = (await self.sync(bob))["rooms"]["join"][room]["unread_notifications"]
        self.assertEqual(entry["notification_count"], classic["notification_count"])
        self.assertEqual(entry["highlight_count"], classic["highlight_count"])
        self.assertGreaterEqual(entry["notification_count"], 2)
        self.assertEqual(entry["highlight_count"], 1)
        alice_view = await self.ss(alice, self.one_list())
        self.assertEqual(alice_view["rooms"][room]["notification_count"], 0)
        self.assertEqual({h["user_id"] for h in alice_view["rooms"][room]["heroes"]},
                         {BOB, "@carol:test.local"})
        self.assertEqual(
            {h["user_id"]: h.get("displayname") for h in alice_view["rooms"][room][
                "heroes"]}[BOB], "Bobby")

    async def test_left_rooms(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        kicked = await self.create_room(alice, preset="public_chat")
        left = await self.create_room(alice, preset="public_chat")
        for room in (kicked, left):
            await self.join(bob, room)
        start = await self.ss(bob, self.one_list(timeline_limit=3))
        self.assertEqual(set(start["rooms"]), {kicked, left})
        await self.member(alice, kicked, "kick", user_id=BOB)
        await self.member(bob, left, "leave")
        await self.send_ok(alice, kicked, "after the kick")
        inc = await self.ss(bob, self.one_list(timeline_limit=3), pos=start["pos"])
        for room in (kicked, left):
            last = inc["rooms"][room]["timeline"][-1]
            self.assertEqual((last["type"], last["content"]["membership"]),
                             ("m.room.member", "leave"))
            self.assertNotIn("initial", inc["rooms"][room])
        self.assertEqual(inc["lists"]["all"]["count"], 2)
        # The room left on one's own goes away once seen; the kick stays listed.
        later = await self.ss(bob, self.one_list(timeline_limit=3), pos=inc["pos"])
        self.assertEqual(later["lists"]["all"]["count"], 1)
        fresh = await self.ss(bob, self.one_list(timeline_limit=3))
        self.assertEqual(fresh["lists"]["all"]["ops"][0]["room_ids"], [kicked])
        self.assertNotIn("after the kick", self.bodies(fresh["rooms"][kicked]))

    async def test_bad_requests(self) -> None:
        alice = await self.user("alice")
        for body in ({"lists": {"a": {"ranges": [[0, "x"]]}}},
                     {"lists": {"a": {"ranges": [[-1, 3]]}}},
                     {"lists": {"a": {"timeline_limit": 2**31}}},
                     {"lists": {"a": {"required_state": [["a"]]}}},
                     {"lists": {"a": {"filters": {"is_dm": "yes"}}}},
                     {"room_subscriptions": {"!r:x": {"timeline_limit": -1}}},
                     {"extensions": {"to_device": {"enabled": True, "since": "abc"}}},
                     {"conn_id": 5}, {"lists": []}):
            resp = await self.ss_raw(alice, body)
            self.assertEqual(resp.code, 400, (body, resp))
            self.assertIn(resp.json["errcode"], ("M_BAD_JSON", "M_INVALID_PARAM"), resp)
        resp = await self.ss_raw(alice, {}, timeout=-5)
        self.assertEqual(resp.code, 400, resp)
        resp = await self.request("POST", SS, {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class RoomContentTest(SlidingSyncCase):
    async def test_required_state_patterns(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat", name="N", topic="T")
        await self.join(bob, room)
        await self.join(carol, room)
        await self.send_ok(carol, room, "carol speaks")

        async def state(required: list[list[str]], limit: int = 1) -> set[tuple[str, str]]:
            out = await self.ss(bob, {"room_subscriptions": {room: {
                "timeline_limit": limit, "required_state": required}}})
            return {(e["type"], e["state_key"]) for e in
                    out["rooms"][room].get("required_state", [])}

        members = {("m.room.member", u) for u in (ALICE, BOB, "@carol:test.local")}
        everything = await state([["*", "*"]])
        self.assertTrue(members <= everything)
        self.assertIn(("m.room.topic", ""), everything)
        self.assertIn(("m.room.create", ""), everything)
        self.assertEqual(await state([["m.room.name", ""], ["m.room.topic", ""]]),
                         {("m.room.name", ""), ("m.room.topic", "")})
        self.assertEqual(await state([["m.room.member", "*"]]), members)
        self.assertEqual(await state([["m.room.member", "$ME"]]), {("m.room.member", BOB)})
        # $LAZY: the members of the timeline's senders only.
        self.assertEqual(await state([["m.room.member", "$LAZY"]]),
                         {("m.room.member", "@carol:test.local")})
        self.assertEqual(await state([["*", ""]]) & members, set())
        self.assertIn(("m.room.name", ""), await state([["*", ""]]))
        self.assertEqual(await state([["m.room.member", ALICE]]), {("m.room.member", ALICE)})
        self.assertEqual(await state([]), set())

    async def test_lazy_members_sent_once_per_connection(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.join(carol, room)
        await self.send_ok(alice, room, "from alice")
        body = {"room_subscriptions": {room: {"timeline_limit": 1, "required_state": [
            ["m.room.member", "$LAZY"]]}}}

        def members(entry: dict[str, Any]) -> list[str]:
            return [e["state_key"] for e in entry.get("required_state", [])
                    if e["type"] == "m.room.member"]

        first = await self.ss(bob, body)
        self.assertEqual(members(first["rooms"][room]), [ALICE])
        await self.send_ok(carol, room, "from carol")
        inc = await self.ss(bob, body, pos=first["pos"])
        self.assertEqual(members(inc["rooms"][room]), ["@carol:test.local"])
        await self.send_ok(carol, room, "carol again")
        await self.send_ok(alice, room, "alice again")
        again = await self.ss(bob, body, pos=inc["pos"])
        self.assertEqual(self.bodies(again["rooms"][room]), ["alice again"])
        self.assertEqual(members(again["rooms"][room]), [])  # both already sent
        # A member the connection has, whose member event changed, comes again.
        await self.request("PUT", f"{CS}/profile/{q(ALICE)}/displayname",
                           {"displayname": "Alice Liddell"}, token=alice)
        renamed = await self.ss(bob, body, pos=again["pos"])
        self.assertEqual(members(renamed["rooms"][room]), [ALICE])

    async def test_timeline_limit_prev_batch_and_messages(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for i in range(6):
            await self.send_ok(alice, room, f"m{i}")
        out = await self.ss(alice, self.one_list(timeline_limit=2))
        entry = out["rooms"][room]
        self.assertEqual(self.bodies(entry), ["m4", "m5"])
        self.assertTrue(entry["limited"])
        self.assertEqual(entry["num_live"], 0)
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=3&from={q(entry['prev_batch'])}",
            token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual([e["content"].get("body") for e in resp.json["chunk"]],
                         ["m3", "m2", "m1"])
        # A limit over /sync's cap (100) is capped, not refused.
        big = await self.ss(alice, self.one_list(timeline_limit=1000))
        self.assertEqual(self.bodies(big["rooms"][room]), [f"m{i}" for i in range(6)])
        self.assertFalse(big["rooms"][room]["limited"])
        # timeline_limit 0: no events but still limited.
        zero = await self.ss(alice, self.one_list(timeline_limit=0))
        self.assertNotIn("timeline", zero["rooms"][room])
        self.assertTrue(zero["rooms"][room]["limited"])

    async def test_history_visibility_applies(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        await self.send_ok(alice, room, "before bob")
        await self.join(bob, room)
        await self.send_ok(alice, room, "after bob")
        out = await self.ss(bob, self.one_list(timeline_limit=10))
        self.assertEqual(self.bodies(out["rooms"][room]), ["after bob"])


class ConnectionTest(SlidingSyncCase):
    async def test_resumed_connection_sends_only_changes(self) -> None:
        alice = await self.user("alice")
        quiet = await self.create_room(alice, name="Quiet")
        busy = await self.create_room(alice, name="Busy")
        body = self.one_list(timeline_limit=3, required_state=[["m.room.topic", ""]])
        first = await self.ss(alice, body)
        self.assertEqual(set(first["rooms"]), {quiet, busy})
        same = await self.ss(alice, body, pos=first["pos"])
        self.assertEqual(same["rooms"], {})
        self.assertEqual(same["lists"]["all"]["count"], 2)
        await self.send_ok(alice, busy, "new")
        await self.put_state(alice, busy, "m.room.topic", {"topic": "fresh"})
        inc = await self.ss(alice, body, pos=same["pos"])
        self.assertEqual(set(inc["rooms"]), {busy})
        entry = inc["rooms"][busy]
        self.assertNotIn("initial", entry)
        self.assertEqual(self.bodies(entry), ["new"])
        self.assertEqual(entry["num_live"], 2)
        self.assertFalse(entry["limited"])
        self.assertEqual([(e["type"], e["content"]) for e in entry["required_state"]],
                         [("m.room.topic", {"topic": "fresh"})])
        # Retrying the previous position answers the same again (the client may not
        # have received it); the position before that is gone.
        retry = await self.ss(alice, body, pos=same["pos"])
        self.assertEqual(set(retry["rooms"]), {busy})
        gone = await self.ss_raw(alice, body, pos=first["pos"])
        self.assertMatrixError(gone, 400, "M_UNKNOWN_POS")
        # Widening required_state sends the newly asked-for state of known rooms.
        wider = self.one_list(timeline_limit=3, required_state=[["m.room.topic", ""],
                                                                ["m.room.name", ""]])
        widened = await self.ss(alice, wider, pos=retry["pos"])
        self.assertEqual(set(widened["rooms"]), {quiet, busy})
        self.assertEqual([e["type"] for e in widened["rooms"][quiet]["required_state"]],
                         ["m.room.name"])
        self.assertNotIn("timeline", widened["rooms"][quiet])

    async def test_room_out_of_window_catches_up(self) -> None:
        alice = await self.user("alice")
        a = await self.create_room(alice)
        b = await self.create_room(alice)
        await self.send_ok(alice, a, "a1")
        body = self.one_list(ranges=[[0, 0]], timeline_limit=2)
        first = await self.ss(alice, body)
        self.assertEqual(set(first["rooms"]), {a})
        for i in range(3):
            await self.send_ok(alice, b, f"b{i}")
        second = await self.ss(alice, body, pos=first["pos"])
        self.assertTrue(second["rooms"][b]["initial"])
        await self.send_ok(alice, a, "a2")
        await self.send_ok(alice, a, "a3")
        await self.send_ok(alice, a, "a4")
        third = await self.ss(alice, body, pos=second["pos"])
        entry = third["rooms"][a]
        self.assertNotIn("initial", entry)  # known to the connection: only the gap
        self.assertEqual(self.bodies(entry), ["a3", "a4"])
        self.assertTrue(entry["limited"])

    async def test_unknown_pos(self) -> None:
        alice = await self.user("alice")
        first = await self.ss(alice, {"conn_id": "main"})
        for pos in ("garbage", "0", first["pos"] + "9", "x" * 300):
            resp = await self.ss_raw(alice, {"conn_id": "main"}, pos=pos)
            self.assertMatrixError(resp, 400, "M_UNKNOWN_POS")
        # A position belongs to its connection (conn_id, device, user).
        resp = await self.ss_raw(alice, {"conn_id": "other"}, pos=first["pos"])
        self.assertMatrixError(resp, 400, "M_UNKNOWN_POS")
        bob = await self.user("bob")
        resp = await self.ss_raw(bob, {"conn_id": "main"}, pos=first["pos"])
        self.assertMatrixError(resp, 400, "M_UNKNOWN_POS")
        ok = await self.ss(alice, {"conn_id": "main", "txn_id": "t1"}, pos=first["pos"])
        self.assertEqual(ok["txn_id"], "t1")
        # Starting over (no pos) forgets the old positions of that connection.
        await self.ss(alice, {"conn_id": "main"})
        resp = await self.ss_raw(alice, {"conn_id": "main"}, pos=ok["pos"])
        self.assertMatrixError(resp, 400, "M_UNKNOWN_POS")

    async def test_long_poll_wakes_on_message(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        body = self.one_list(timeline_limit=5)
        start = await self.ss(bob, body)
        waiting = defer.ensureDeferred(self.ss(bob, body, pos=start["pos"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.send_ok(alice, room, "wake up")
        result = await waiting
        self.assertEqual(self.bodies(result["rooms"][room]), ["wake up"])
        self.assertEqual(result["rooms"][room]["num_live"], 1)

    async def test_long_poll_wakes_on_invite(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, name="Invite")
        body = self.one_list(timeline_limit=5)
        start = await self.ss(bob, body)
        self.assertEqual(start["rooms"], {})
        waiting = defer.ensureDeferred(self.ss(bob, body, pos=start["pos"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.member(alice, room, "invite", user_id=BOB)
        result = await waiting
        self.assertTrue(result["rooms"][room]["initial"])
        self.assertIn("invite_state", result["rooms"][room])

    async def test_long_poll_times_out_empty(self) -> None:
        alice = await self.user("alice")
        await self.create_room(alice)
        body = self.one_list()
        start = await self.ss(alice, body)
        waiting = defer.ensureDeferred(self.ss(alice, body, pos=start["pos"], timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(waiting.called)
        self.advance(31)
        result = await waiting
        self.assertEqual(result["rooms"], {})
        # The empty answer's position is usable.
        await self.ss(alice, body, pos=result["pos"])
