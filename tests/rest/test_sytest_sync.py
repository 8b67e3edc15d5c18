"""SyTest sync details (issue 12): archived rooms, room summaries, lazy-loaded members in
incremental syncs, ignored users. Each test mirrors a SyTest test of the same name."""

from __future__ import annotations

import json

from tests.rest.room_helpers import CS, RoomTestCase, q

LL = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}})
LL_REDUNDANT = json.dumps({"room": {"state": {"lazy_load_members": True,
                                              "include_redundant_members": True},
                                    "timeline": {"limit": 10}}})
LEAVE = json.dumps({"room": {"include_leave": True}})
IGNORE_FILTER = json.dumps({
    "account_data": {"types": ["m.ignored_user_list"]}, "presence": {"types": []},
    "room": {"timeline": {"types": ["m.room.message"]}, "state": {"types": ["m.room.member"]}},
})


def uid(name: str) -> str:
    return f"@{name}:test.local"


def members(body: dict, room: str) -> dict[str, str]:
    """{state_key: membership} of the member events in a joined room's ``state``."""
    events = body["rooms"]["join"][room]["state"]["events"]
    return {e["state_key"]: e["content"]["membership"] for e in events
            if e["type"] == "m.room.member"}


class LazyMembersTest(RoomTestCase):
    async def _room(self, *names: str) -> tuple[str, list[str]]:
        tokens = [await self.user(n) for n in names]
        room = await self.create_room(tokens[0], preset="public_chat")
        resp = await self.put_state(tokens[0], room, "m.room.name", {"name": "A room name"})
        self.assertEqual(resp.code, 200, resp)
        return room, tokens

    async def _fill(self, token: str, room: str, n: int) -> None:
        for i in range(n):
            await self.send_ok(token, room, f"filler {i}")

    async def test_incremental_only_timeline_senders(self) -> None:
        """The only membership state included in an incremental sync is for senders in
        the timeline."""
        room, (alice, bob, charlie) = await self._room("alice", "bob", "charlie")
        await self.join(bob, room)
        await self.join(charlie, room)
        await self._fill(bob, room, 10)
        first = await self.sync(alice, filter=LL)
        state = first["rooms"]["join"][room]["state"]["events"]
        types = {(e["type"], e["state_key"]) for e in state}
        self.assertEqual(types - {("m.room.guest_access", "")}, {
            ("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.power_levels", ""),
            ("m.room.name", ""), ("m.room.history_visibility", ""),
            ("m.room.member", uid("alice")), ("m.room.member", uid("bob"))})
        await self.send_ok(charlie, room, "Message from charlie")
        second = await self.sync(alice, first["next_batch"], filter=LL)
        state = second["rooms"]["join"][room]["state"]["events"]
        self.assertEqual([(e["type"], e["state_key"]) for e in state],
                         [("m.room.member", uid("charlie"))])
        third = await self.sync(alice, second["next_batch"], filter=LL)
        self.assertEqual(third["rooms"]["join"], {})

    async def test_gapped_incremental_only_timeline_senders(self) -> None:
        """The only membership state included in a gapped incremental sync is for senders
        in the timeline (the older SyTest form: Charlie's messages fall in the gap)."""
        room, (alice, bob, charlie, dave) = await self._room("alice", "bob", "charlie", "dave")
        for t in (bob, charlie, dave):
            await self.join(t, room)
        await self._fill(bob, room, 10)
        first = await self.sync(alice, filter=LL)
        self.assertEqual(members(first, room), {uid("alice"): "join", uid("bob"): "join"})
        await self._fill(charlie, room, 10)
        await self._fill(dave, room, 10)
        second = await self.sync(alice, first["next_batch"], filter=LL)
        self.assertTrue(second["rooms"]["join"][room]["timeline"]["limited"])
        self.assertEqual(members(second, room), {uid("dave"): "join"})

    async def test_gapped_includes_all_state_changes(self) -> None:
        """Gapped incremental syncs include all state changes."""
        room, (alice, bob, charlie, dave) = await self._room("alice", "bob", "charlie", "dave")
        await self.join(bob, room)
        await self.join(charlie, room)
        await self._fill(bob, room, 10)
        first = await self.sync(alice, filter=LL)
        self.assertEqual(members(first, room), {uid("alice"): "join", uid("bob"): "join"})
        await self.join(dave, room)
        await self._fill(charlie, room, 20)
        second = await self.sync(alice, first["next_batch"], filter=LL)
        self.assertEqual(members(second, room), {uid("charlie"): "join", uid("dave"): "join"})
        resp = await self.member(dave, room, "leave")
        self.assertEqual(resp.code, 200, resp)
        await self._fill(charlie, room, 20)
        third = await self.sync(alice, second["next_batch"], filter=LL)
        self.assertEqual(members(third, room), {uid("dave"): "leave"})

    async def test_old_leaves_in_gapped(self) -> None:
        """Old leaves are present in gapped incremental syncs."""
        room, (alice, bob, charlie) = await self._room("alice", "bob", "charlie")
        await self.join(bob, room)
        await self.join(charlie, room)
        await self.send_ok(charlie, room, "Hello world")
        await self._fill(bob, room, 10)
        first = await self.sync(alice, filter=LL)
        self.assertEqual(members(first, room), {uid("alice"): "join", uid("bob"): "join"})
        await self.member(charlie, room, "leave")
        await self._fill(bob, room, 10)
        second = await self.sync(alice, first["next_batch"], filter=LL)
        self.assertEqual(members(second, room), {uid("charlie"): "leave"})

    async def test_old_members_start_speaking(self) -> None:
        """Old members are included in gappy incr LL sync if they start speaking."""
        room, (alice, bob, charlie) = await self._room("alice", "bob", "charlie")
        await self.join(bob, room)
        await self.join(charlie, room)
        await self._fill(bob, room, 10)
        first = await self.sync(alice, filter=LL)
        self.assertEqual(members(first, room), {uid("alice"): "join", uid("bob"): "join"})
        await self._fill(bob, room, 10)
        await self._fill(charlie, room, 10)
        second = await self.sync(alice, first["next_batch"], filter=LL)
        self.assertEqual(members(second, room), {uid("charlie"): "join"})

    async def test_members_from_the_gap(self) -> None:
        """Members from the gap are included in gappy incr LL sync."""
        room, (alice, bob, charlie, dave) = await self._room("alice", "bob", "charlie", "dave")
        await self.join(bob, room)
        await self.join(charlie, room)
        await self._fill(bob, room, 10)
        first = await self.sync(alice, filter=LL)
        await self.join(dave, room)
        await self._fill(charlie, room, 10)
        second = await self.sync(alice, first["next_batch"], filter=LL)
        self.assertEqual(members(second, room), {uid("charlie"): "join", uid("dave"): "join"})

    async def _redundant(self, filt: str) -> dict[str, str]:
        room, (alice, bob, charlie) = await self._room("alice", "bob", "charlie")
        await self.join(bob, room)
        await self.join(charlie, room)
        await self._fill(bob, room, 10)
        await self._fill(charlie, room, 5)
        first = await self.sync(alice, filter=filt)
        self.assertEqual(set(members(first, room)), {uid("alice"), uid("bob"), uid("charlie")})
        await self.send_ok(bob, room, "New message from bob")
        await self.send_ok(charlie, room, "New message from charlie")
        second = await self.sync(alice, first["next_batch"], filter=filt)
        return members(second, room)

    async def test_no_redundant_members_by_default(self) -> None:
        """We don't send redundant membership state across incremental syncs by default."""
        self.assertEqual(await self._redundant(LL), {})

    async def test_redundant_members_if_asked(self) -> None:
        """We do send redundant membership state across incremental syncs if asked."""
        self.assertEqual(await self._redundant(LL_REDUNDANT),
                         {uid("bob"): "join", uid("charlie"): "join"})


class RoomSummaryTest(RoomTestCase):
    async def test_named_room_summary(self) -> None:
        """Named room comes with just joined member count summary."""
        alice, bob, charlie = (await self.user("alice"), await self.user("bob"),
                               await self.user("charlie"))
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.name", {"name": "A room name"})
        await self.join(bob, room)
        await self.join(charlie, room)
        body = await self.sync(alice, filter=LL)
        self.assertEqual(body["rooms"]["join"][room]["summary"],
                         {"m.joined_member_count": 3, "m.invited_member_count": 0})

    async def test_named_room_counts_change(self) -> None:
        """Room summary counts change when membership changes."""
        alice, bob, charlie = (await self.user("alice"), await self.user("bob"),
                               await self.user("charlie"))
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.name", {"name": "A room name"})
        await self.put_state(alice, room, "m.room.avatar", {"url": "mxc://example.com/x"})
        await self.join(bob, room)
        expected = {"m.joined_member_count": 2, "m.invited_member_count": 0}
        self.assertEqual((await self.sync(alice, filter=LL))["rooms"]["join"][room]["summary"],
                         expected)
        await self.join(charlie, room)
        expected["m.joined_member_count"] = 3
        self.assertEqual((await self.sync(alice, filter=LL))["rooms"]["join"][room]["summary"],
                         expected)
        await self.member(bob, room, "leave")
        expected["m.joined_member_count"] = 2
        self.assertEqual((await self.sync(alice, filter=LL))["rooms"]["join"][room]["summary"],
                         expected)

    async def test_summary_counts_and_heroes(self) -> None:
        """Unnamed rooms get sorted heroes (not the user); counts follow membership
        (Room summary counts change when membership changes)."""
        alice, bob, charlie = (await self.user("alice"), await self.user("bob"),
                               await self.user("charlie"))
        room = await self.create_room(alice, preset="public_chat")
        await self.join(charlie, room)
        await self.join(bob, room)
        first = await self.sync(alice, filter=LL)
        self.assertEqual(first["rooms"]["join"][room]["summary"], {
            "m.joined_member_count": 3, "m.invited_member_count": 0,
            "m.heroes": [uid("bob"), uid("charlie")]})
        await self.member(charlie, room, "leave")
        second = await self.sync(alice, first["next_batch"], filter=LL)
        self.assertEqual(second["rooms"]["join"][room]["summary"], {
            "m.joined_member_count": 2, "m.invited_member_count": 0,
            "m.heroes": [uid("bob")]})
        await self.member(bob, room, "leave")
        third = await self.sync(alice, second["next_batch"], filter=LL)
        # Everyone else left: heroes fall back to those who left.
        self.assertEqual(third["rooms"]["join"][room]["summary"]["m.heroes"],
                         [uid("bob"), uid("charlie")])
        self.assertEqual(third["rooms"]["join"][room]["summary"]["m.joined_member_count"], 1)


class ArchivedRoomsTest(RoomTestCase):
    async def test_newly_left_incremental_has_no_state(self) -> None:
        """Newly left rooms appear in the leave section of incremental sync."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        first = await self.sync(alice, filter=LEAVE)
        await self.member(alice, room, "leave")
        second = await self.sync(alice, first["next_batch"], filter=LEAVE)
        left = second["rooms"]["leave"][room]
        self.assertEqual(left["state"]["events"], [])
        self.assertIn("timeline", left)

    async def test_own_leave_with_restricted_history(self) -> None:
        """We should see our own leave event, even if history_visibility is restricted
        (SYN-662)."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)
        first = await self.sync(alice, filter=LEAVE)
        await self.member(alice, room, "leave")
        second = await self.sync(alice, first["next_batch"], filter=LEAVE)
        left = second["rooms"]["leave"][room]
        self.assertEqual(left["state"]["events"], [])
        self.assertEqual([(e["type"], e["content"]["membership"])
                          for e in left["timeline"]["events"]], [("m.room.member", "leave")])

    async def test_gapped_left_room_state_is_delta(self) -> None:
        """A gappy incremental leave still carries what changed in the gap."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        first = await self.sync(bob, filter=LEAVE)
        await self.put_state(alice, room, "m.room.topic", {"topic": "gap"})
        for i in range(12):
            await self.send_ok(alice, room, f"m{i}")
        await self.member(bob, room, "leave")
        second = await self.sync(bob, first["next_batch"], filter=LEAVE)
        left = second["rooms"]["leave"][room]
        self.assertTrue(left["timeline"]["limited"])
        self.assertEqual([e["type"] for e in left["state"]["events"]], ["m.room.topic"])


class IgnoreTest(RoomTestCase):
    async def _ignore(self, token: str, user: str, target: str) -> None:
        resp = await self.request(
            "PUT", f"{CS}/user/{q(user)}/account_data/m.ignored_user_list",
            {"ignored_users": {target: {}}}, token=token)
        self.assertEqual(resp.code, 200, resp)

    async def test_ignore_user_in_existing_room(self) -> None:
        """Ignore user in existing room."""
        u1, u2, u3 = await self.user("u1"), await self.user("u2"), await self.user("u3")
        room = await self.create_room(u1, preset="public_chat")
        await self.join(u2, room)
        await self.join(u3, room)
        for t in (u1, u2, u3):
            await self.send_ok(t, room, "Message")
        first = await self.sync(u1, filter=IGNORE_FILTER)
        self.assertEqual(len(first["rooms"]["join"][room]["timeline"]["events"]), 3)
        await self._ignore(u1, uid("u1"), uid("u2"))
        second = await self.sync(u1, filter=IGNORE_FILTER)
        joined = second["rooms"]["join"][room]
        self.assertEqual(len(joined["timeline"]["events"]), 2)
        self.assertEqual(len(joined["state"]["events"]), 3)
        await self.send_ok(u2, room, "Message2")
        third = await self.sync(u1, second["next_batch"], filter=IGNORE_FILTER)
        self.assertEqual(third["rooms"]["join"], {})
        await self.send_ok(u3, room, "Message3")
        fourth = await self.sync(u1, third["next_batch"], filter=IGNORE_FILTER)
        self.assertEqual(len(fourth["rooms"]["join"][room]["timeline"]["events"]), 1)

    async def test_ignore_invite_full_and_incremental(self) -> None:
        """Ignore invite in full sync / Ignore invite in incremental sync."""
        u1, u2 = await self.user("u1"), await self.user("u2")
        room_a = await self.create_room(u2)
        room_b = await self.create_room(u2)
        await self._ignore(u1, uid("u1"), uid("u2"))
        resp = await self.member(u2, room_a, "invite", user_id=uid("u1"))
        self.assertEqual(resp.code, 200, resp)
        full = await self.sync(u1, filter=IGNORE_FILTER)
        self.assertEqual(full["rooms"]["invite"], {})
        resp = await self.member(u2, room_b, "invite", user_id=uid("u1"))
        self.assertEqual(resp.code, 200, resp)
        inc = await self.sync(u1, full["next_batch"], filter=IGNORE_FILTER)
        self.assertEqual(inc["rooms"]["invite"], {})
