"""POST /user_directory/search: matching, who is visible, limits and errors."""

from __future__ import annotations

from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

SEARCH = f"{CS}/user_directory/search"


class UserDirectoryTest(RoomTestCase):
    async def search(self, token: str | None, term: Any, **extra: Any) -> Any:
        return await self.request("POST", SEARCH, {"search_term": term, **extra}, token=token)

    async def ids(self, token: str, term: str, **extra: Any) -> list[str]:
        resp = await self.search(token, term, **extra)
        self.assertEqual(resp.code, 200, resp)
        return [r["user_id"] for r in resp.json["results"]]

    async def set_profile(self, token: str, user_id: str, key: str, value: str) -> None:
        resp = await self.request("PUT", f"{CS}/profile/{q(user_id)}/{key}", {key: value},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)

    async def test_visibility_rules(self) -> None:
        alice, bob, carol, dave, erin, frank = [
            await self.user(n) for n in ("alice", "bob", "carol", "dave", "erin", "frank")]
        # Alice and Bob share a private room.
        private = await self.create_room(alice, invite=["@bob:test.local"])
        await self.join(bob, private)
        # Dave is in a publicly joinable room; Frank in an invite-only world-readable one.
        public = await self.create_room(dave, preset="public_chat")
        readable = await self.create_room(frank)
        await self.put_state(frank, readable, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        self.assertEqual(await self.ids(alice, "bob"), ["@bob:test.local"])
        self.assertEqual(await self.ids(carol, "bob"), [])
        for token in (alice, carol, erin):
            self.assertEqual(await self.ids(token, "dave"), ["@dave:test.local"])
            self.assertEqual(await self.ids(token, "frank"), ["@frank:test.local"])
        # Erin is in no room: nobody finds her, not even herself.
        self.assertEqual(await self.ids(alice, "erin"), [])
        self.assertEqual(await self.ids(erin, "erin"), [])
        # Leaving the shared room hides Bob again.
        await self.member(bob, private, "leave")
        self.assertEqual(await self.ids(alice, "bob"), [])
        # A room that stops being public stops exposing its members.
        await self.put_state(dave, public, "m.room.join_rules", {"join_rule": "invite"})
        self.assertEqual(await self.ids(carol, "dave"), [])
        # Deactivated users never appear.
        await self.put_state(frank, readable, "m.room.join_rules", {"join_rule": "public"})
        await self.hs.stores.users.deactivate("@frank:test.local", 0)
        self.assertEqual(await self.ids(alice, "frank"), [])
        del erin

    async def test_matching(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        bobby = await self.user("bobby")
        jane = await self.user("jane.doe")
        room = await self.create_room(alice, preset="public_chat")
        for token in (bob, bobby, jane):
            await self.join(token, room)
        await self.set_profile(bob, "@bob:test.local", "displayname", "Robert Tables")
        await self.set_profile(bob, "@bob:test.local", "avatar_url", "mxc://test.local/bob")
        resp = await self.search(alice, "ROBERT")
        self.assertEqual(resp.json, {"limited": False, "results": [
            {"user_id": "@bob:test.local", "display_name": "Robert Tables",
             "avatar_url": "mxc://test.local/bob"}]})
        for term in ("rob", "tables", "robert tables", "  Robert   TAB ", "@bob:test.local",
                     "@bob:te", "@bo"):
            self.assertIn("@bob:test.local", await self.ids(alice, term), term)
        for term in ("obert", "robert zzz", "test.local", "local", "%", "_", "b%b", "\\"):
            self.assertEqual(await self.ids(alice, term), [], term)
        self.assertEqual(await self.ids(alice, "doe"), ["@jane.doe:test.local"])
        self.assertEqual(await self.ids(alice, "jane"), ["@jane.doe:test.local"])
        # Exact localpart match first; display names default to the localpart.
        self.assertEqual(await self.ids(alice, "bob"), ["@bob:test.local", "@bobby:test.local"])
        resp = await self.search(alice, "bobby")
        self.assertEqual(resp.json["results"], [{"user_id": "@bobby:test.local",
                                                 "display_name": "bobby"}])
        self.assertEqual(await self.ids(alice, "   "), [])
        self.assertEqual(await self.ids(alice, ""), [])

    async def test_unicode_display_name(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.set_profile(bob, "@bob:test.local", "displayname", "Zoë Ünver")
        self.assertEqual(await self.ids(alice, "zoë"), ["@bob:test.local"])
        self.assertEqual(await self.ids(alice, "Ünv"), ["@bob:test.local"])

    async def test_limits(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        for i in range(4):
            await self.join(await self.user(f"user{i}"), room)
        resp = await self.search(alice, "user", limit=2)
        self.assertEqual(len(resp.json["results"]), 2)
        self.assertTrue(resp.json["limited"])
        resp = await self.search(alice, "user")
        self.assertEqual(len(resp.json["results"]), 4)
        self.assertFalse(resp.json["limited"])
        resp = await self.search(alice, "user", limit=1000)
        self.assertEqual(len(resp.json["results"]), 4)
        resp = await self.search(alice, "user", limit=-5)
        self.assertEqual(resp.json, {"results": [], "limited": True})
        long_term = "user " * 1000
        self.assertEqual(len((await self.search(alice, long_term)).json["results"]), 4)

    async def test_errors(self) -> None:
        alice = await self.user("alice")
        self.assertMatrixError(await self.search(None, "x"), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("POST", SEARCH, {}, token=alice), 400,
                               "M_MISSING_PARAM")
        self.assertMatrixError(await self.search(alice, 5), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.search(alice, None), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.search(alice, "x", limit="3"), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("POST", SEARCH, raw_body=b"nope", token=alice),
                               400, "M_NOT_JSON")

    # SyTest 52user-directory/01public.pl: the user searches for themselves, so sharing a
    # (private) room with oneself must not make one visible; the room becoming public does.
    async def _private_room_with(self, creator: str, user: str) -> str:
        room = await self.create_room(creator, preset="private_chat", invite=["@bob:test.local"])
        self.assertEqual((await self.join(user, room)).code, 200)
        return room

    async def test_self_not_visible_through_private_room(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        await self._private_room_with(alice, bob)
        self.assertEqual(await self.ids(bob, "bob"), [])
        self.assertEqual(await self.ids(bob, "alice"), ["@alice:test.local"])
        self.assertEqual(await self.ids(alice, "bob"), ["@bob:test.local"])

    async def test_appear_disappear_on_join_rules(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self._private_room_with(alice, bob)
        self.assertEqual(await self.ids(bob, "bob"), [])
        await self.put_state(alice, room, "m.room.join_rules", {"join_rule": "public"})
        self.assertEqual(await self.ids(bob, "bob"), ["@bob:test.local"])
        await self.put_state(alice, room, "m.room.join_rules", {"join_rule": "invite"})
        self.assertEqual(await self.ids(bob, "bob"), [])

    async def test_appear_disappear_on_history_visibility(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self._private_room_with(alice, bob)
        self.assertEqual(await self.ids(bob, "bob"), [])
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        self.assertEqual(await self.ids(bob, "bob"), ["@bob:test.local"])
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "shared"})
        self.assertEqual(await self.ids(bob, "bob"), [])

    async def test_stay_while_world_readable(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self._private_room_with(alice, bob)
        await self.put_state(alice, room, "m.room.join_rules", {"join_rule": "public"})
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        self.assertEqual(await self.ids(bob, "bob"), ["@bob:test.local"])
        await self.put_state(alice, room, "m.room.join_rules", {"join_rule": "invite"})
        self.assertEqual(await self.ids(bob, "bob"), ["@bob:test.local"])
        # Carol, in no room with Bob, sees him only while the room is public.
        carol = await self.user("carol")
        self.assertEqual(await self.ids(carol, "bob"), ["@bob:test.local"])
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "shared"})
        self.assertEqual(await self.ids(bob, "bob"), [])
        self.assertEqual(await self.ids(carol, "bob"), [])
