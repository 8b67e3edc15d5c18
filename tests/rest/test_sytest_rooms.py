"""SyTest (issue 12) room reads and state: each test reproduces one SyTest case at HTTP
level (tests/10apidoc/31room-state.pl, 33room-members.pl, 34room-messages.pl,
tests/30rooms/01state.pl, 22profile.pl)."""

from __future__ import annotations

from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


class SyTestRoomReadsTest(RoomTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def get(self, path: str, token: str | None = None, code: int = 200) -> Any:
        resp = await self.request("GET", f"{CS}{path}", token=token)
        self.assertEqual(resp.code, code, resp)
        return resp.json

    # -- 31room-state.pl ----------------------------------------------------------------

    async def test_joined_members_has_profile_keys(self) -> None:
        """GET /rooms/:room_id/joined_members fetches my membership: the keys that are
        set; an unset one is left out, as the spec's schema types them as strings
        (SyTest's null check fails by design, see README)."""
        room = await self.create_room(self.alice, visibility="public")
        joined = (await self.get(f"/rooms/{q(room)}/joined_members", self.alice))["joined"]
        self.assertIn("display_name", joined[ALICE])
        self.assertNotIn("avatar_url", joined[ALICE])

    async def test_room_initial_sync_has_start_and_end(self) -> None:
        """GET /rooms/:room_id/initialSync fetches initial sync state."""
        room = await self.create_room(self.alice, visibility="public")
        body = await self.get(f"/rooms/{q(room)}/initialSync", self.alice)
        for key in ("room_id", "membership", "state", "messages", "presence"):
            self.assertIn(key, body)
        for key in ("chunk", "start", "end"):
            self.assertIn(key, body["messages"])
        self.assertEqual(body["membership"], "join")
        self.assertTrue(body["messages"]["chunk"])
        # The start token pages on backwards from the oldest message returned.
        more = await self.get(f"/rooms/{q(room)}/messages?dir=b&from="
                              f"{q(body['messages']['start'])}", self.alice)
        self.assertEqual(more["chunk"], [])
        # With a small limit there is history before ``start``.
        body = await self.get(f"/rooms/{q(room)}/initialSync?limit=2", self.alice)
        more = await self.get(f"/rooms/{q(room)}/messages?dir=b&limit=50&from="
                              f"{q(body['messages']['start'])}", self.alice)
        seen = {e["event_id"] for e in body["messages"]["chunk"]}
        self.assertTrue(more["chunk"])
        self.assertFalse(seen & {e["event_id"] for e in more["chunk"]})

    async def test_public_rooms_without_token(self) -> None:
        """GET /publicRooms lists newly-created room (no access token: the spec's GET
        /publicRooms is unauthenticated)."""
        room = await self.create_room(self.alice, visibility="public")
        body = await self.get("/publicRooms")
        self.assertIn(room, [r["room_id"] for r in body["chunk"]])
        # The search form still needs a token.
        resp = await self.request("POST", f"{CS}/publicRooms", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        # A bad token is still refused.
        resp = await self.request("GET", f"{CS}/publicRooms", token="nope")
        self.assertEqual(resp.code, 401, resp)

    # -- 33room-members.pl --------------------------------------------------------------

    async def _member_content(self, room: str, user_id: str) -> dict[str, Any]:
        return await self.get(f"/rooms/{q(room)}/state/m.room.member/{q(user_id)}", self.alice)

    async def test_join_with_custom_content_by_id(self) -> None:
        """POST /join/:room_id can join a room with custom content."""
        room = await self.create_room(self.alice, preset="public_chat")
        resp = await self.request("POST", f"{CS}/join/{q(room)}", {"foo": "bar"}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["room_id"], room)
        content = await self._member_content(room, BOB)
        self.assertEqual(content["foo"], "bar")
        self.assertEqual(content["membership"], "join")

    async def test_join_with_custom_content_by_alias(self) -> None:
        """POST /join/:room_alias can join a room with custom content."""
        room = await self.create_room(self.alice, preset="public_chat", room_alias_name="custom")
        resp = await self.request("POST", f"{CS}/join/{q('#custom:test.local')}",
                                  {"foo": "bar"}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        content = await self._member_content(room, BOB)
        self.assertEqual((content["foo"], content["membership"]), ("bar", "join"))

    async def test_join_custom_content_cannot_set_server_fields(self) -> None:
        """The client's body never chooses the membership, the authorising user or the
        third-party fields of its join event."""
        room = await self.create_room(self.alice, preset="public_chat")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/join",
                                  {"membership": "ban", "join_authorised_via_users_server": ALICE,
                                   "reason": "hi", "x": 1}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        content = await self._member_content(room, BOB)
        self.assertEqual(content["membership"], "join")
        self.assertEqual(content["reason"], "hi")
        self.assertEqual(content["x"], 1)
        self.assertNotIn("join_authorised_via_users_server", content)

    # -- 34room-messages.pl -------------------------------------------------------------

    async def test_post_send_without_txn_id(self) -> None:
        """POST /rooms/:room_id/send/:event_type sends a message."""
        room = await self.create_room(self.alice)
        content = {"msgtype": "m.message", "body": "Here is the message content"}
        first = await self.request("POST", f"{CS}/rooms/{q(room)}/send/m.room.message", content,
                                   token=self.alice)
        self.assertEqual(first.code, 200, first)
        self.assertTrue(first.json["event_id"].startswith("$"))
        second = await self.request("POST", f"{CS}/r0/rooms/{q(room)}/send/m.room.message"
                                    .replace(f"{CS}/r0", "/_matrix/client/r0"), content,
                                    token=self.alice)
        self.assertEqual(second.code, 200, second)
        # No transaction id: nothing to de-duplicate on.
        self.assertNotEqual(first.json["event_id"], second.json["event_id"])

    # -- 30rooms/01state.pl -------------------------------------------------------------

    async def test_global_initial_sync(self) -> None:
        """Global initialSync: each room's messages has start, end and a chunk."""
        room = await self.create_room(self.alice, visibility="public", room_alias_name="st")
        self.assertEqual((await self.put_state(self.alice, room, "m.room.topic",
                                               {"topic": "T"})).code, 200)
        body = await self.get("/initialSync", self.alice)
        found = [r for r in body["rooms"] if r["room_id"] == room]
        self.assertEqual(len(found), 1)
        info = found[0]
        self.assertEqual((info["membership"], info["visibility"]), ("join", "public"))
        for key in ("start", "end", "chunk"):
            self.assertIn(key, info["messages"])
        self.assertTrue(info["messages"]["chunk"])
        topic = [e for e in info["state"] if e["type"] == "m.room.topic"]
        self.assertEqual(topic[0]["content"]["topic"], "T")
        empty = await self.get("/initialSync?limit=0", self.alice)
        self.assertEqual([r["messages"]["chunk"] for r in empty["rooms"]
                          if r["room_id"] == room], [[]])

    async def test_setting_state_twice_is_idempotent(self) -> None:
        """Setting state twice is idempotent: the same content from the same sender
        returns the current event and makes no new one."""
        room = await self.create_room(self.alice, preset="public_chat")
        first = await self.put_state(self.alice, room, "a.test.state", {"a": 1}, "k")
        self.assertEqual(first.code, 200, first)
        since = (await self.sync(self.alice))["next_batch"]
        again = await self.put_state(self.alice, room, "a.test.state", {"a": 1}, "k")
        self.assertEqual(again.code, 200, again)
        self.assertEqual(again.json["event_id"], first.json["event_id"])
        sync = await self.sync(self.alice, since=since)
        self.assertNotIn(room, sync["rooms"]["join"])
        # Other content, or the same content from another sender, is a new event.
        changed = await self.put_state(self.alice, room, "a.test.state", {"a": 2}, "k")
        self.assertNotEqual(changed.json["event_id"], first.json["event_id"])
        pl = await self.get(f"/rooms/{q(room)}/state/m.room.power_levels", self.alice)
        pl["users"][BOB] = 100
        self.assertEqual((await self.put_state(self.alice, room, "m.room.power_levels", pl)).code,
                         200)
        self.assertEqual((await self.join(self.bob, room)).code, 200)
        by_bob = await self.put_state(self.bob, room, "a.test.state", {"a": 2}, "k")
        self.assertEqual(by_bob.code, 200, by_bob)
        self.assertNotEqual(by_bob.json["event_id"], changed.json["event_id"])

    async def test_identical_state_still_needs_permission(self) -> None:
        """A user who may not send the state gets 403, even with the current content."""
        room = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.put_state(self.alice, room, "m.room.topic",
                                               {"topic": "T"})).code, 200)
        self.assertEqual((await self.join(self.bob, room)).code, 200)
        resp = await self.put_state(self.bob, room, "m.room.topic", {"topic": "T"})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    # -- 30rooms/22profile.pl -----------------------------------------------------------

    async def test_displayname_updates_member_events(self) -> None:
        """displayname updates affect room member events (and avatar_url alike): each
        joined room gets a join event with the new profile, keeping its other keys."""
        room = await self.create_room(self.alice, preset="public_chat")
        other = await self.create_room(self.alice, preset="public_chat")
        resp = await self.request("POST", f"{CS}/join/{q(room)}", {"foo": "bar"}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(self.bob, other)).code, 200)
        self.assertEqual((await self.member(self.bob, other, "leave")).code, 200)
        since = (await self.sync(self.bob))["next_batch"]
        resp = await self.request("PUT", f"{CS}/profile/{q(BOB)}/displayname",
                                  {"displayname": "LemurLover"}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("PUT", f"{CS}/profile/{q(BOB)}/avatar_url",
                                  {"avatar_url": "mxc://test.local/lemur"}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        content = await self._member_content(room, BOB)
        self.assertEqual(content, {"membership": "join", "displayname": "LemurLover",
                                   "avatar_url": "mxc://test.local/lemur", "foo": "bar"})
        sync = await self.sync(self.bob, since=since)
        timeline = sync["rooms"]["join"][room]["timeline"]["events"]
        mine = [e["content"] for e in timeline
                if e["type"] == "m.room.member" and e["state_key"] == BOB]
        self.assertEqual([c.get("displayname") for c in mine[-2:]], ["LemurLover"] * 2)
        self.assertEqual(mine[-1].get("avatar_url"), "mxc://test.local/lemur")
        # A room the user left is not re-joined.
        content = await self._member_content(other, BOB)
        self.assertEqual(content["membership"], "leave")
        # Clearing the avatar removes it from the member event.
        resp = await self.request("PUT", f"{CS}/profile/{q(BOB)}/avatar_url",
                                  {"avatar_url": ""}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn("avatar_url", await self._member_content(room, BOB))
