"""Shadow-bans (Synapse's semantics): the banned user gets success answers, but their
messages, state, redactions, invites (direct and through createRoom) and typing reach
nobody and are not stored; their own membership still works; lifting the ban restores
everything. Plus the endpoint's roles, errors and audit entries."""

from __future__ import annotations

from typing import Any

from tests.rest.fake_identity_server import ACCESS_TOKEN, IdentityTestCase
from tests.rest.room_helpers import CS, RoomTestCase, q

SA = "/_synapse/admin/v1"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"


def timeline(sync: dict, room: str) -> list[dict[str, Any]]:
    return sync["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])


def typing_events(sync: dict, room: str) -> list[list[str]]:
    events = sync["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])
    return [e["content"]["user_ids"] for e in events if e["type"] == "m.typing"]


class ShadowBanTest(RoomTestCase):
    async def _setup(self) -> str:
        self.admin = await self.user("ada")
        await self.hs.stores.roles.set_role("@ada:test.local", "admin")
        self.mod = await self.user("mo")
        await self.hs.stores.roles.set_role("@mo:test.local", "moderator")
        self.support = await self.user("sam")
        await self.hs.stores.roles.set_role("@sam:test.local", "support")
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")
        room = await self.create_room(self.bob, preset="public_chat",
                                      power_level_content_override={"invite": 0})
        self.assertEqual((await self.join(self.alice, room)).code, 200)
        return room

    async def ban(self, token: str, user_id: str = ALICE, method: str = "POST") -> Any:
        return await self.request(method, f"{SA}/users/{q(user_id)}/shadow_ban",
                                  token=token)

    async def membership_of(self, room: str, user_id: str) -> str | None:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user_id)}", token=self.bob)
        return resp.json.get("membership") if resp.code == 200 else None

    async def test_banned_sends_reach_nobody(self) -> None:
        room = await self._setup()
        start = await self.sync(self.bob)
        resp = await self.ban(self.mod)
        self.assertEqual((resp.code, resp.json), (200, {}))

        sent = await self.send(self.alice, room, "buy cheap stuff")
        self.assertEqual(sent.code, 200, sent)
        fake_id = sent.json["event_id"]
        self.assertTrue(fake_id.startswith("$"))
        topic = await self.put_state(self.alice, room, "m.room.topic", {"topic": "spam"})
        self.assertEqual(topic.code, 200, topic)
        self.assertTrue(topic.json["event_id"].startswith("$"))
        invite = await self.member(self.alice, room, "invite", user_id=CAROL)
        self.assertEqual((invite.code, invite.json), (200, {}))
        typing = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}",
                                    {"typing": True, "timeout": 10000}, token=self.alice)
        self.assertEqual(typing.code, 200, typing)
        made = await self.request("POST", f"{CS}/createRoom",
                                  {"invite": [CAROL], "name": "a trap"}, token=self.alice)
        self.assertEqual(made.code, 200, made)  # the room is made, the invite is not

        # Nothing of it is stored or delivered.
        self.assertEqual((await self.get_event(self.bob, room, fake_id)).code, 404)
        self.assertEqual((await self.get_event(self.alice, room, fake_id)).code, 404)
        self.assertIsNone(await self.hs.stores.events.get_event(fake_id))
        bob_sync = await self.sync(self.bob, start["next_batch"])
        bodies = [e["content"].get("body") for e in timeline(bob_sync, room)]
        self.assertNotIn("buy cheap stuff", bodies)
        self.assertFalse([e for e in timeline(bob_sync, room) if e["type"] == "m.room.topic"])
        self.assertEqual(typing_events(bob_sync, room), [])
        self.assertIsNone(await self.membership_of(room, CAROL))
        carol_sync = await self.sync(self.carol)
        self.assertEqual(carol_sync["rooms"].get("invite", {}), {})

        # A positive control: Bob's own typing and messages do reach Alice.
        await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(BOB)}",
                           {"typing": True, "timeout": 10000}, token=self.bob)
        await self.send_ok(self.bob, room, "hello alice")
        alice_sync = await self.sync(self.alice, start["next_batch"])
        self.assertIn("hello alice",
                      [e["content"].get("body") for e in timeline(alice_sync, room)])
        self.assertEqual(typing_events(alice_sync, room), [[BOB]])

        # Her own membership still works (as Synapse): she can leave.
        resp = await self.member(self.alice, room, "leave")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.membership_of(room, ALICE), "leave")

        # Lifted: her messages reach Bob again.
        self.assertEqual((await self.join(self.alice, room)).code, 200)
        resp = await self.ban(self.mod, method="DELETE")
        self.assertEqual((resp.code, resp.json), (200, {}))
        after = await self.sync(self.bob)
        real = await self.send_ok(self.alice, room, "sorry")
        self.assertEqual((await self.get_event(self.bob, room, real)).code, 200)
        later = await self.sync(self.bob, after["next_batch"])
        self.assertIn("sorry", [e["content"].get("body") for e in timeline(later, room)])
        invite = await self.member(self.alice, room, "invite", user_id=CAROL)
        self.assertEqual(invite.code, 200, invite)
        self.assertEqual(await self.membership_of(room, CAROL), "invite")

    async def test_redaction_by_banned_user_is_dropped(self) -> None:
        room = await self._setup()
        own = await self.send_ok(self.alice, room, "before the ban")
        await self.ban(self.admin)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(own)}/r1", {},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        seen = await self.get_event(self.bob, room, own)
        self.assertEqual(seen.json["content"].get("body"), "before the ban")

    async def test_roles_errors_and_audit(self) -> None:
        await self._setup()
        self.assertMatrixError(await self.ban(self.support), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.ban(self.alice), 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{SA}/users/{q(ALICE)}/shadow_ban")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.ban(self.mod, "@x:elsewhere.example"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.ban(self.mod, "not-a-user-id"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.ban(self.mod, "@nobody:test.local"), 404,
                               "M_NOT_FOUND")
        # A moderator cannot shadow-ban an account holding an admin role; an admin can.
        self.assertMatrixError(await self.ban(self.mod, "@ada:test.local"), 403,
                               "M_FORBIDDEN")
        self.assertEqual((await self.ban(self.admin, "@mo:test.local")).code, 200)
        self.assertEqual((await self.ban(self.mod)).code, 200)
        self.assertEqual((await self.ban(self.mod)).code, 200)  # idempotent
        self.assertTrue(await self.hs.stores.shadow_bans.is_banned(ALICE))
        # Synapse's user details show it (synapse-admin reads this flag).
        details = await self.request("GET", f"/_synapse/admin/v2/users/{q(ALICE)}",
                                    token=self.mod)
        self.assertIs(details.json["shadow_banned"], True)
        self.assertEqual((await self.ban(self.admin, method="DELETE")).code, 200)
        self.assertFalse(await self.hs.stores.shadow_bans.is_banned(ALICE))
        details = await self.request("GET", f"/_synapse/admin/v2/users/{q(ALICE)}",
                                    token=self.mod)
        self.assertIs(details.json["shadow_banned"], False)
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        done = [(e.user_id, e.target, e.details["action"]) for e in events
                if e.outcome == "success"]
        self.assertIn(("@mo:test.local", ALICE, "shadow_ban"), done)
        self.assertIn(("@ada:test.local", ALICE, "shadow_unban"), done)
        self.assertIn(("@ada:test.local", "@mo:test.local", "shadow_ban"), done)


class ShadowBanThirdPartyInviteTest(IdentityTestCase):
    async def test_3pid_invites_contact_nobody(self) -> None:
        admin = await self.user("ada")
        await self.hs.stores.roles.set_role("@ada:test.local", "admin")
        alice = await self.user("alice")
        await self.user("bob")
        await self.ids.bind_identity("email", "bob@example.org", BOB)
        room = await self.create_room(alice, visibility="private")
        resp = await self.request("POST", f"{SA}/users/{q(ALICE)}/shadow_ban", token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.ids.requests.clear()
        third_party = {"id_server": self.ids.name, "id_access_token": ACCESS_TOKEN,
                       "medium": "email", "address": "bob@example.org"}
        resp = await self.member(alice, room, "invite", **third_party)
        self.assertEqual(resp.code, 200, resp)
        made = await self.request("POST", f"{CS}/createRoom", {"invite_3pid": [third_party]},
                                  token=alice)
        self.assertEqual(made.code, 200, made)
        self.assertEqual(self.ids.requests, [])
        for room_id in (room, made.json["room_id"]):
            state = await self.request(
                "GET", f"{CS}/rooms/{q(room_id)}/state/m.room.member/{q(BOB)}", token=alice)
            self.assertEqual(state.code, 404, state)
        # Lifted: the identity server is asked again.
        await self.request("DELETE", f"{SA}/users/{q(ALICE)}/shadow_ban", token=admin)
        resp = await self.member(alice, room, "invite", **third_party)
        self.assertEqual(resp.code, 200, resp)
        self.assertTrue(self.ids.requests)
