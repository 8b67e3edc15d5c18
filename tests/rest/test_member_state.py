"""PUT /rooms/{roomId}/state/m.room.member/{userId}: membership set through the state
endpoint takes the membership endpoints' path and checks, as in Synapse (SyTest
30rooms/14override-per-room, 31sync/06state, 31sync/09archived)."""

from __future__ import annotations

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"


class MemberStateTest(RoomTestCase):
    async def member_event(self, token: str, room: str, user: str) -> dict:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user)}", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def test_override_displayname_in_one_room(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        other = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.member",
                                    {"membership": "join", "displayname": "Overridden"}, ALICE)
        self.assertEqual(resp.code, 200, resp)
        self.assertTrue(resp.json["event_id"].startswith("$"))
        self.assertEqual((await self.member_event(alice, room, ALICE))["displayname"],
                         "Overridden")
        self.assertNotEqual((await self.member_event(alice, other, ALICE)).get("displayname"),
                            "Overridden")

    async def test_join_with_overridden_displayname(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.put_state(bob, room, "m.room.member",
                                    {"membership": "join", "displayname": "Overridden"}, BOB)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.member_event(alice, room, BOB))["displayname"],
                         "Overridden")

    async def test_join_checks_still_apply(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice)  # private: invite only
        resp = await self.put_state(bob, room, "m.room.member", {"membership": "join"}, BOB)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Nobody joins (or knocks) for someone else.
        public = await self.create_room(alice, preset="public_chat")
        resp = await self.put_state(alice, public, "m.room.member", {"membership": "join"}, BOB)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_server_only_keys_are_dropped(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.member", {
            "membership": "join", "join_authorised_via_users_server": BOB,
            "displayname": "A"}, ALICE)
        self.assertEqual(resp.code, 200, resp)
        event = await self.member_event(alice, room, ALICE)
        self.assertNotIn("join_authorised_via_users_server", event)
        self.assertEqual(event["membership"], "join")

    async def test_invite_leave_kick_and_ban_through_state(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.member", {"membership": "invite"}, BOB)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(bob, room)).code, 200)
        # A member without the power cannot kick through the state endpoint either.
        resp = await self.put_state(alice, room, "m.room.member", {"membership": "invite"},
                                    CAROL)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(carol, room)).code, 200)
        resp = await self.put_state(bob, room, "m.room.member", {"membership": "leave"}, CAROL)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.put_state(bob, room, "m.room.member", {"membership": "leave"}, BOB)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.member_event(alice, room, BOB))["membership"], "leave")
        resp = await self.put_state(alice, room, "m.room.member",
                                    {"membership": "ban", "reason": "spam"}, CAROL)
        self.assertEqual(resp.code, 200, resp)
        banned = await self.member_event(alice, room, CAROL)
        self.assertEqual((banned["membership"], banned["reason"]), ("ban", "spam"))

    async def test_bad_membership_is_400(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for content in ({}, {"membership": "sideways"}, {"membership": 1}):
            resp = await self.put_state(alice, room, "m.room.member", content, ALICE)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
