"""Joins to restricted / knock_restricted rooms (an authorising member is chosen for
eligible users) and leaving every room on deactivation, over HTTP."""

from __future__ import annotations

from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"


class RestrictedJoinTest(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")

    async def member_event(self, room: str, user_id: str, token: str | None = None) -> dict:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user_id)}",
            token=token or self.alice)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def restricted_pair(self, rule: str = "restricted",
                              room_version: str | None = None) -> tuple[str, str]:
        """Room A (public, bob joins it) and room B, joinable by members of A."""
        extra = {"room_version": room_version} if room_version else {}
        room_a = await self.create_room(self.alice, preset="public_chat", **extra)
        # v12 room ids hash the create event: two identical ones in the same millisecond
        # would collide (a separate issue, reported), so time moves on between them.
        self.advance(1)
        room_b = await self.create_room(self.alice, **extra)
        resp = await self.put_state(self.alice, room_b, "m.room.join_rules", {
            "join_rule": rule,
            "allow": [{"type": "m.room_membership", "room_id": room_a},
                      {"type": "org.example.unknown", "room_id": room_b}],
        })
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(self.bob, room_a)).code, 200)
        return room_a, room_b

    async def _check_member_of_a_may_join(self, rule: str, room_version: str | None) -> None:
        _, room_b = await self.restricted_pair(rule, room_version)
        resp = await self.join(self.bob, room_b)
        self.assertEqual(resp.code, 200, resp)
        content = await self.member_event(room_b, BOB)
        self.assertEqual(content["membership"], "join")
        self.assertEqual(content["join_authorised_via_users_server"], ALICE)
        # Carol is in no allowed room.
        self.assertMatrixError(await self.join(self.carol, room_b), 403, "M_FORBIDDEN")
        self.assertEqual((await self.request(
            "GET", f"{CS}/rooms/{q(room_b)}/state/m.room.member/{q(CAROL)}",
            token=self.alice)).code, 404)

    async def test_restricted(self) -> None:
        await self._check_member_of_a_may_join("restricted", None)

    async def test_knock_restricted(self) -> None:
        await self._check_member_of_a_may_join("knock_restricted", None)

    async def test_restricted_v11_and_v12(self) -> None:
        await self._check_member_of_a_may_join("restricted", "11")
        # v12: the creator's power is infinite (no users entry); still chosen.
        _, room_b = await self.restricted_pair("restricted", "12")
        self.assertEqual((await self.join(self.bob, room_b)).code, 200)
        content = await self.member_event(room_b, BOB)
        self.assertEqual(content["join_authorised_via_users_server"], ALICE)

    async def test_invited_user_needs_no_authoriser(self) -> None:
        _, room_b = await self.restricted_pair()
        await self.member(self.alice, room_b, "invite", user_id=CAROL)
        self.assertEqual((await self.join(self.carol, room_b)).code, 200)
        self.assertNotIn("join_authorised_via_users_server", await self.member_event(room_b, CAROL))

    async def test_leaving_allowed_room_revokes_eligibility(self) -> None:
        room_a, room_b = await self.restricted_pair()
        await self.member(self.bob, room_a, "leave")
        self.assertMatrixError(await self.join(self.bob, room_b), 403, "M_FORBIDDEN")

    async def test_authoriser_must_be_able_to_invite(self) -> None:
        """The highest-power local member is chosen; if none may invite, the join
        cannot be granted (400 M_UNABLE_TO_GRANT_JOIN, as the spec names it)."""
        _, room_b = await self.restricted_pair()
        # Alice lets Carol in with power 50, then raises invite above everyone but herself.
        await self.member(self.alice, room_b, "invite", user_id=CAROL)
        await self.join(self.carol, room_b)
        await self.put_state(self.alice, room_b, "m.room.power_levels",
                             {"users": {ALICE: 100, CAROL: 50}, "invite": 100})
        await self.member(self.alice, room_b, "leave")
        self.assertMatrixError(await self.join(self.bob, room_b), 400, "M_UNABLE_TO_GRANT_JOIN")

    async def test_banned_user_cannot_join(self) -> None:
        _, room_b = await self.restricted_pair()
        await self.member(self.alice, room_b, "ban", user_id=BOB)
        self.assertMatrixError(await self.join(self.bob, room_b), 403, "M_FORBIDDEN")


class DeactivationLeavesRoomsTest(RoomTestCase):
    async def test_deactivated_user_leaves_rejects_and_withdraws(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        joined = await self.create_room(alice, preset="public_chat")
        invited = await self.create_room(alice)
        knocked = await self.create_room(alice)
        await self.join(bob, joined)
        await self.member(alice, invited, "invite", user_id=BOB)
        await self.put_state(alice, knocked, "m.room.join_rules", {"join_rule": "knock"})
        resp = await self.request("POST", f"{CS}/knock/{q(knocked)}", {}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        # Bob has also left one room already: that one is left alone.
        gone = await self.create_room(alice, preset="public_chat")
        await self.join(bob, gone)
        await self.member(bob, gone, "leave")
        before = await self.sync(alice)

        first = await self.request("POST", DEACTIVATE, {}, token=bob)
        self.assertEqual(first.code, 401, first)
        done = await self.request("POST", DEACTIVATE, {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": TEST_PASSWORD,
        }}, token=bob)
        self.assertEqual(done.code, 200, done)

        for room in (joined, invited, knocked):
            resp = await self.request(
                "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(BOB)}", token=alice)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json["membership"], "leave", room)
        # Alice sees the leave in her sync timeline of the room they shared.
        after = await self.sync(alice, since=before["next_batch"])
        timeline = after["rooms"]["join"][joined]["timeline"]["events"]
        leaves = [e for e in timeline if e["type"] == "m.room.member" and e["state_key"] == BOB]
        self.assertEqual([e["content"]["membership"] for e in leaves], ["leave"])
        self.assertNotIn(gone, after["rooms"].get("join", {}))
        joined_rooms = await self.hs.stores.room_members.rooms_for_user(
            BOB, ("join", "invite", "knock"))
        self.assertEqual(joined_rooms, [])
