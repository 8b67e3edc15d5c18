"""Initial /sync of an account in many rooms (issue 18): timelines read several rooms at
a time, states, summaries and state events for all rooms at once
(homeserver/handlers/sync_initial.py), summaries counted from the membership table. The
answer must be what one room after another gave."""

from __future__ import annotations

import json

from homeserver.handlers.sync_initial import INITIAL_SYNC_ROOM_CONCURRENCY
from homeserver.http.errors import Codes, MatrixError
from tests.rest.room_helpers import CS, RoomTestCase, q

LAZY = json.dumps({"room": {"state": {"lazy_load_members": True},
                            "timeline": {"limit": 2}}})


def uid(name: str) -> str:
    return f"@{name}:test.local"


class InitialSyncManyRoomsTest(RoomTestCase):
    async def test_rooms_in_order_with_their_own_summaries(self) -> None:
        """More rooms than are built at once, each with its own members: every room is
        there, in membership order, with its own counts and heroes."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        dave = await self.user("dave")
        n = INITIAL_SYNC_ROOM_CONCURRENCY + 3
        rooms = []
        for i in range(n):
            room = await self.create_room(alice, preset="public_chat")
            rooms.append(room)
            if i % 2 == 0:
                self.assertEqual((await self.join(bob, room)).code, 200)
            if i % 3 == 0:
                resp = await self.member(alice, room, "invite", user_id=uid("carol"))
                self.assertEqual(resp.code, 200, resp)
            if i % 4 == 0:
                self.assertEqual((await self.join(dave, room)).code, 200)
                self.assertEqual((await self.member(dave, room, "leave")).code, 200)
            await self.send_ok(alice, room, f"hello {i}")
        result = await self.sync(alice)
        joined = result["rooms"]["join"]
        self.assertEqual(list(joined), rooms)
        for i, room in enumerate(rooms):
            summary = joined[room]["summary"]
            members = [uid("alice")] + ([uid("bob")] if i % 2 == 0 else [])
            invited = [uid("carol")] if i % 3 == 0 else []
            self.assertEqual(summary["m.joined_member_count"], len(members), i)
            self.assertEqual(summary["m.invited_member_count"], len(invited), i)
            heroes = sorted(u for u in members + invited if u != uid("alice"))
            if not heroes and i % 4 == 0:
                heroes = [uid("dave")]  # nobody else joined or invited: who left
            self.assertEqual(summary.get("m.heroes"), heroes, i)
            bodies = [e["content"].get("body") for e in joined[room]["timeline"]["events"]]
            self.assertEqual(bodies[-1], f"hello {i}")
            state_members = {e["state_key"] for e in joined[room]["state"]["events"]
                             + joined[room]["timeline"]["events"]
                             if e["type"] == "m.room.member"}
            self.assertEqual(state_members, set(members) | set(invited)
                             | ({uid("dave")} if i % 4 == 0 else set()), i)
        del carol

    async def test_lazy_members_remembered_as_one_room_after_another(self) -> None:
        """A lazy-loading initial sync over many rooms remembers what the device was
        sent as when the rooms were built one after another (the last room's members):
        an incremental sync of that room does not send bob's membership again."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        rooms = []
        for i in range(INITIAL_SYNC_ROOM_CONCURRENCY + 2):
            room = await self.create_room(alice, preset="public_chat")
            self.assertEqual((await self.join(bob, room)).code, 200)
            for k in range(3):  # bob's join out of the 2-event timeline: in the state
                await self.send_ok(bob, room, f"bob {k} in {i}")
            rooms.append(room)
        first = await self.sync(alice, filter=LAZY)
        for room in rooms:
            members = {e["state_key"] for e in first["rooms"]["join"][room]["state"]["events"]
                       if e["type"] == "m.room.member"}
            self.assertIn(uid("bob"), members)
        await self.send_ok(bob, rooms[-1], "again")
        inc = await self.sync(alice, first["next_batch"], filter=LAZY)
        last = inc["rooms"]["join"][rooms[-1]]
        self.assertEqual([e["content"]["body"] for e in last["timeline"]["events"]], ["again"])
        self.assertNotIn(uid("bob"), {e.get("state_key") for e in last["state"]["events"]})

    async def test_error_in_one_room_is_the_answer(self) -> None:
        """A room that fails fails the sync with that room's own error (as one room
        after another did), not a wrapped error of the rooms built together."""
        alice = await self.user("alice")
        for _ in range(3):
            room = await self.create_room(alice)
            for i in range(12):  # no message in the first batch: read on room by room
                resp = await self.put_state(alice, room, "m.room.topic", {"topic": f"t{i}"})
                self.assertEqual(resp.code, 200, resp)
        messages = json.dumps({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}})
        sync = self.hs.websockets.sync
        original = sync._timeline  # noqa: SLF001 (the step still taken room by room)

        async def failing(*args: object, **kwargs: object) -> None:
            raise MatrixError(403, "room refused", Codes.FORBIDDEN)

        sync._timeline = failing  # type: ignore[method-assign]  # noqa: SLF001
        try:
            resp = await self.request("GET", f"{CS}/sync?timeout=0&filter={q(messages)}",
                                      token=alice)
        finally:
            sync._timeline = original  # type: ignore[method-assign]  # noqa: SLF001
        self.assertEqual(resp.code, 403, resp)
        self.assertEqual(resp.json["errcode"], Codes.FORBIDDEN)


class StateInOneTransactionTest(RoomTestCase):
    async def test_state_for_groups_and_state_at_match_the_chain_walk(self) -> None:
        """Every state group of a room with delta chains reads the same through
        get_state_for_groups (one or many at once) as through get_state_for_group, and
        get_state_at as state_group_at then get_state_for_group, at every position."""
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat", name="first")
        for i in range(6):
            token = await self.user(f"u{i}")
            self.assertEqual((await self.join(token, room)).code, 200)
            resp = await self.put_state(alice, room, "m.room.name", {"name": f"name {i}"})
            self.assertEqual(resp.code, 200, resp)
            await self.send_ok(token, room, "hi")
        events = self.hs.stores.events
        groups = [int(r[0]) for r in await self.hs.db.query(
            "t", "SELECT id FROM state_groups WHERE room_id = ? ORDER BY id", room)]
        chained = await self.hs.db.query(
            "t", "SELECT COUNT(*) FROM state_groups WHERE room_id = ? AND prev_group IS NOT NULL",
            room)
        self.assertGreater(int(chained[0][0]), 3)  # deltas, not only snapshots
        together = await events.get_state_for_groups(groups)
        self.assertEqual(set(together), set(groups))
        for group in groups:
            walked = await events.get_state_for_group(group)
            self.assertTrue(walked)
            self.assertEqual((await events.get_state_for_groups([group]))[group], walked)
            self.assertEqual(together[group], walked)
        positions = [int(r[0]) for r in await self.hs.db.query(
            "t", "SELECT stream_ordering FROM events WHERE room_id = ? ORDER BY stream_ordering",
            room)]
        for position in [0, *positions, positions[-1] + 100]:
            group = await events.state_group_at(room, position)
            expected = await events.get_state_for_group(group) if group is not None else {}
            self.assertEqual(await events.get_state_at(room, position), expected, position)
            state, rows = await events.get_state_and_memberships_at(room, position)
            self.assertEqual(state, expected, position)
            member_ids = [e for (t, _), e in expected.items() if t == "m.room.member"]
            self.assertEqual(set(rows), set(member_ids), position)
            found = await events.get_events(member_ids)
            for eid, (user_id, membership) in rows.items():
                self.assertEqual((user_id, membership),
                                 (found[eid].state_key, found[eid].content["membership"]))
        # A group that does not exist reads as empty either way.
        self.assertEqual((await events.get_state_for_groups([10**9]))[10**9], {})
        self.assertEqual(await events.get_state_for_groups([]), {})


class BulkTimelinesTest(RoomTestCase):
    async def test_bulk_timelines_match_room_by_room(self) -> None:
        """The first batches read for many rooms at once give every room the timeline
        SyncHandler._timeline gives it alone: rooms with history hidden from alice, an
        ignored sender, more and fewer events than the limit, filters by type; more
        rooms than one read takes."""
        from homeserver.handlers.sync import SyncRequest, SyncToken
        from homeserver.handlers.sync_filter import SyncFilter
        from homeserver.handlers.sync_initial import TIMELINE_ROOMS_PER_READ

        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        rooms = []
        hidden = await self.create_room(bob, preset="public_chat")  # joined-only history
        resp = await self.put_state(bob, hidden, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)
        for i in range(4):
            await self.send_ok(bob, hidden, f"before alice {i}")
        rooms.append(hidden)
        busy = await self.create_room(bob, preset="public_chat")
        rooms.append(busy)
        for _ in range(TIMELINE_ROOMS_PER_READ):
            rooms.append(await self.create_room(bob, preset="public_chat"))
        quiet = rooms[-1]
        for room in rooms:
            self.assertEqual((await self.join(alice, room)).code, 200)
            self.assertEqual((await self.join(carol, room)).code, 200)
        for i in range(25):
            await self.send_ok(bob if i % 3 else carol, busy, f"busy {i}")
        await self.send_ok(carol, quiet, "from carol")
        await self.send_ok(bob, hidden, "after alice")
        resp = await self.request(
            "PUT", f"{CS}/user/{q('@alice:test.local')}/account_data/m.ignored_user_list",
            {"ignored_users": {"@carol:test.local": {}}}, token=alice)
        self.assertEqual(resp.code, 200, resp)

        sync = self.hs.websockets.sync
        for raw in ({}, {"room": {"timeline": {"limit": 3}}},
                    {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}},
                    {"room": {"timeline": {"limit": 30}}},
                    {"room": {"state": {"lazy_load_members": True}}}):
            body = await self.sync(alice, filter=json.dumps(raw))
            req = SyncRequest("@alice:test.local", None, None, 0, False, SyncFilter.parse(raw))
            position = SyncToken.parse(body["next_batch"]).events
            ignored = await sync.ignored_users("@alice:test.local")
            self.assertEqual(ignored, frozenset({"@carol:test.local"}))
            for room in rooms:
                alone, limited = await sync._timeline(  # noqa: SLF001
                    req, room, 0, position, ignored, joined=True)
                got = body["rooms"]["join"][room]["timeline"]
                self.assertEqual([e["event_id"] for e in got["events"]],
                                 [e.event_id for e in alone], (raw, room))
                self.assertEqual(got["limited"], limited, (raw, room))
