"""Every membership transition over HTTP, allowed and forbidden."""

from __future__ import annotations

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"


class MembershipTest(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")

    async def membership_of(self, room: str, user_id: str) -> str | None:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user_id)}", token=self.alice)
        return resp.json.get("membership") if resp.code == 200 else None

    async def test_invite_join_leave(self) -> None:
        room = await self.create_room(self.alice)
        self.assertMatrixError(await self.join(self.bob, room), 403, "M_FORBIDDEN")
        self.assertEqual((await self.member(self.alice, room, "invite", user_id=BOB)).code, 200)
        self.assertEqual(await self.membership_of(room, BOB), "invite")
        self.assertEqual((await self.member(self.bob, room, "join")).code, 200)
        self.assertEqual(await self.membership_of(room, BOB), "join")
        # Joining again is a no-op success.
        self.assertEqual((await self.join(self.bob, room)).code, 200)
        self.assertEqual((await self.member(self.bob, room, "leave")).code, 200)
        self.assertEqual(await self.membership_of(room, BOB), "leave")
        self.assertMatrixError(await self.send(self.bob, room), 403, "M_FORBIDDEN")
        joined = await self.request("GET", f"{CS}/joined_rooms", token=self.bob)
        self.assertEqual(joined.json["joined_rooms"], [])

    async def test_invite_needs_membership_and_power(self) -> None:
        room = await self.create_room(self.alice)
        resp = await self.member(self.bob, room, "invite", user_id=CAROL)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.put_state(self.alice, room, "m.room.power_levels",
                             {"users": {ALICE: 100}, "invite": 50})
        await self.member(self.alice, room, "invite", user_id=BOB)
        await self.member(self.bob, room, "join")
        resp = await self.member(self.bob, room, "invite", user_id=CAROL)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_kick_ban_unban(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, room)
        await self.join(self.carol, room)
        # Bob (power 0) may not kick or ban.
        self.assertMatrixError(await self.member(self.bob, room, "kick", user_id=CAROL),
                               403, "M_FORBIDDEN")
        self.assertMatrixError(await self.member(self.bob, room, "ban", user_id=CAROL),
                               403, "M_FORBIDDEN")
        self.assertEqual((await self.member(self.alice, room, "kick", user_id=CAROL,
                                            reason="spam")).code, 200)
        self.assertEqual(await self.membership_of(room, CAROL), "leave")
        # Kicking someone not in the room is refused.
        self.assertMatrixError(await self.member(self.alice, room, "kick", user_id=CAROL),
                               403, "M_FORBIDDEN")
        self.assertEqual((await self.member(self.alice, room, "ban", user_id=BOB)).code, 200)
        self.assertEqual(await self.membership_of(room, BOB), "ban")
        self.assertMatrixError(await self.join(self.bob, room), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.member(self.alice, room, "unban", user_id=CAROL),
                               403, "M_FORBIDDEN")
        self.assertEqual((await self.member(self.alice, room, "unban", user_id=BOB)).code, 200)
        self.assertEqual((await self.join(self.bob, room)).code, 200)

    async def test_cannot_kick_higher_power(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat",
                                      power_level_content_override={"kick": 0})
        await self.join(self.bob, room)
        self.assertMatrixError(await self.member(self.bob, room, "kick", user_id=ALICE),
                               403, "M_FORBIDDEN")

    async def test_forget(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, room)
        resp = await self.member(self.bob, room, "forget")
        self.assertEqual(resp.code, 400)
        await self.member(self.bob, room, "leave")
        self.assertEqual((await self.member(self.bob, room, "forget")).code, 200)
        self.assertMatrixError(await self.member(self.carol, room, "forget"), 404, "M_NOT_FOUND")

    async def test_knock(self) -> None:
        room = await self.create_room(self.alice)
        resp = await self.request("POST", f"{CS}/knock/{q(room)}", {}, token=self.bob)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.put_state(self.alice, room, "m.room.join_rules", {"join_rule": "knock"})
        resp = await self.request("POST", f"{CS}/knock/{q(room)}", {"reason": "let me in"},
                                  token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.membership_of(room, BOB), "knock")
        await self.member(self.alice, room, "invite", user_id=BOB)
        self.assertEqual((await self.join(self.bob, room)).code, 200)

    async def test_bad_membership_requests(self) -> None:
        room = await self.create_room(self.alice)
        self.assertMatrixError(await self.member(self.alice, room, "invite"), 400,
                               "M_MISSING_PARAM")
        self.assertMatrixError(await self.member(self.alice, room, "invite", user_id="bob"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.member(self.alice, room, "kick"), 400, "M_MISSING_PARAM")
        resp = await self.member(self.alice, room, "invite", id_server="x", medium="email",
                                 address="a@b.c")
        self.assertMatrixError(resp, 400, "M_SERVER_NOT_TRUSTED")  # no identity_servers
        self.assertMatrixError(await self.join(self.alice, "#nope:test.local"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.join(self.alice, "nope"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.join(self.bob, "!unknown:test.local"), 404,
                               "M_NOT_FOUND")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/leave", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class HistoryVisibilityTest(RoomTestCase):
    async def _room_with_history(self, visibility: str) -> tuple[str, str, str, str]:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": visibility})
        before = await self.send_ok(alice, room, "before bob")
        await self.join(bob, room)
        after = await self.send_ok(alice, room, "after bob")
        return alice, bob, room, before + "|" + after

    async def test_joined_hides_history_before_join(self) -> None:
        _alice, bob, room, ids = await self._room_with_history("joined")
        before, after = ids.split("|")
        self.assertMatrixError(await self.get_event(bob, room, before), 404, "M_NOT_FOUND")
        self.assertEqual((await self.get_event(bob, room, after)).code, 200)

    async def test_shared_shows_history_to_members(self) -> None:
        _alice, bob, room, ids = await self._room_with_history("shared")
        before, _after = ids.split("|")
        self.assertEqual((await self.get_event(bob, room, before)).code, 200)

    async def test_nothing_after_leaving(self) -> None:
        alice, bob, room, ids = await self._room_with_history("shared")
        _before, after = ids.split("|")
        await self.member(bob, room, "leave")
        later = await self.send_ok(alice, room, "bob is gone")
        self.assertMatrixError(await self.get_event(bob, room, later), 404, "M_NOT_FOUND")
        # What he saw while joined stays visible.
        self.assertEqual((await self.get_event(bob, room, after)).code, 200)
        state = await self.request("GET", f"{CS}/rooms/{q(room)}/state", token=bob)
        self.assertEqual(state.code, 200)

    async def test_world_readable(self) -> None:
        alice = await self.user("alice")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        event_id = await self.send_ok(alice, room, "for everyone")
        self.assertEqual((await self.get_event(carol, room, event_id)).code, 200)


class ForgottenRoomTest(RoomTestCase):
    async def test_forgotten_room_state_is_hidden(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.member(bob, room, "leave")
        self.assertEqual((await self.request("GET", f"{CS}/rooms/{q(room)}/state",
                                             token=bob)).code, 200)
        await self.member(bob, room, "forget")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state", token=bob)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
