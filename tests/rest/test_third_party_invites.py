"""Third-party invites through a trusted identity server (SyTest
tests/30rooms/12thirdpartyinvite.pl): existing (bound) 3PIDs get a plain invite;
unbound ones an ``m.room.third_party_invite`` that the identity server's ``onbind``
call exchanges for a real invite, only when its signature and key check out."""

from __future__ import annotations

from typing import Any

from tests.rest.fake_identity_server import ACCESS_TOKEN, IdentityTestCase
from tests.rest.room_helpers import CS, q

EMAIL = "lemurs@monkeyworld.org"
BOB = "@bob:test.local"
ALICE = "@alice:test.local"


class ThirdPartyInviteTest(IdentityTestCase):
    async def invite_3pid(self, token: str, room: str, **extra: Any) -> Any:
        body = {"id_server": self.ids.name, "id_access_token": ACCESS_TOKEN,
                "medium": "email", "address": EMAIL, **extra}
        return await self.member(token, room, "invite", **body)

    async def member_state(self, token: str, room: str, user: str) -> Any:
        return await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user)}", token=token)

    async def onbind(self) -> None:
        code = await self.ids.bind_identity("email", EMAIL, BOB, self.base_url)
        self.assertEqual(code, 200)

    async def test_invite_existing_3pid(self) -> None:
        alice, _ = await self.user("alice"), await self.user("bob")
        await self.ids.bind_identity("email", EMAIL, BOB)
        room = await self.create_room(alice, visibility="private")
        resp = await self.invite_3pid(alice, room)
        self.assertEqual(resp.code, 200, resp)
        state = await self.member_state(alice, room, BOB)
        self.assertEqual(state.json["membership"], "invite", state)

    async def test_invite_existing_3pid_in_create_room(self) -> None:
        alice, _ = await self.user("alice"), await self.user("bob")
        await self.ids.bind_identity("email", EMAIL, BOB)
        room = await self.create_room(alice, invite_3pid=[{
            "id_server": self.ids.name, "id_access_token": ACCESS_TOKEN,
            "medium": "email", "address": EMAIL}])
        state = await self.member_state(alice, room, BOB)
        self.assertEqual(state.json["membership"], "invite", state)

    async def test_invite_unbound_3pid_then_bind(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, visibility="private")
        resp = await self.invite_3pid(alice, room)
        self.assertEqual(resp.code, 200, resp)
        tpi = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.third_party_invite/0",
                                 token=alice)
        self.assertEqual(tpi.code, 200, tpi)
        self.assertEqual(tpi.json["display_name"], "Bob")
        self.assertEqual(len(tpi.json["public_keys"]), 2)
        # Only what the spec requires went to the identity server.
        store = next(r for r in self.ids.requests if r[1].endswith("/store-invite"))
        self.assertEqual(set(store[3]) - {"id_access_token"},
                         {"medium", "address", "room_id", "sender"})
        await self.onbind()
        sync = await self.sync(bob)
        invite_state = sync["rooms"]["invite"][room]["invite_state"]["events"]
        self.assertIn(ALICE, {e["state_key"] for e in invite_state if e["type"] == "m.room.member"})
        state = await self.member_state(alice, room, BOB)
        self.assertEqual(state.json["membership"], "invite")
        self.assertEqual(state.json["third_party_invite"]["display_name"], "Bob")
        self.assertEqual((await self.join(bob, room)).code, 200)
        state = await self.member_state(alice, room, BOB)
        self.assertEqual(state.json["membership"], "join")

    async def test_unbound_3pid_with_no_ops(self) -> None:
        alice, carol, bob = await self.user("alice"), await self.user("carol"), \
            await self.user("bob")
        room = await self.create_room(alice, visibility="private",
                                      power_level_content_override={"invite": 0})
        await self.member(alice, room, "invite", user_id="@carol:test.local")
        self.assertEqual((await self.join(carol, room)).code, 200)
        self.assertEqual((await self.invite_3pid(carol, room)).code, 200)
        await self.onbind()
        self.assertEqual((await self.join(bob, room)).code, 200)

    async def test_accept_after_inviter_leaves(self) -> None:
        alice, carol, bob = await self.user("alice"), await self.user("carol"), \
            await self.user("bob")
        room = await self.create_room(alice, visibility="private")
        await self.member(alice, room, "invite", user_id="@carol:test.local")
        self.assertEqual((await self.join(carol, room)).code, 200)
        self.assertEqual((await self.invite_3pid(alice, room)).code, 200)
        self.assertEqual((await self.member(alice, room, "leave")).code, 200)
        await self.onbind()
        self.assertEqual((await self.join(bob, room)).code, 200)
        state = await self.member_state(carol, room, BOB)
        self.assertEqual(state.json["membership"], "join")

    async def assert_not_invited(self, bob: str, alice: str, room: str) -> None:
        self.assertEqual((await self.join(bob, room)).code, 403)
        state = await self.member_state(alice, room, BOB)
        self.assertEqual(state.code, 404, state)

    async def test_wrong_signature_rejected(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, visibility="private")
        await self.invite_3pid(alice, room)
        self.ids.rotate_keys()  # onbind now signs with keys the room never saw
        await self.onbind()
        await self.assert_not_invited(bob, alice, room)

    async def test_revoked_key_rejected(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, visibility="private")
        await self.invite_3pid(alice, room)
        old_key = self.ids.key
        self.ids.rotate_keys()
        self.ids.key = old_key  # signs with the old key, which isvalid no longer lists
        await self.onbind()
        await self.assert_not_invited(bob, alice, room)

    async def test_forged_onbind_without_valid_signature_rejected(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, visibility="private")
        await self.invite_3pid(alice, room)
        forged = {"mxid": BOB, "medium": "email", "address": EMAIL, "invites": [{
            "room_id": room, "sender": ALICE, "token": "0", "mxid": BOB,
            "signed": {"mxid": BOB, "token": "0",
                       "signatures": {self.ids.name: {"ed25519:0": "A" * 86}}}}]}
        resp = await self.request("PUT", "/_matrix/federation/v1/3pid/onbind", forged)
        self.assertEqual(resp.code, 200, resp)
        await self.assert_not_invited(bob, alice, room)
        resp = await self.request("PUT", "/_matrix/federation/v1/3pid/onbind",
                                  {"mxid": 1, "medium": "email", "address": EMAIL})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_non_member_cannot_3pid_invite(self) -> None:
        alice, carol = await self.user("alice"), await self.user("carol")
        room = await self.create_room(alice, visibility="private")
        before = len(self.ids.requests)
        self.assertMatrixError(await self.invite_3pid(carol, room), 403, "M_FORBIDDEN")
        self.assertEqual(len(self.ids.requests), before)

    async def test_missing_access_token_and_untrusted_server(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.member(alice, room, "invite", id_server=self.ids.name,
                                 medium="email", address=EMAIL)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.invite_3pid(alice, room, id_server="evil.example.org")
        self.assertMatrixError(resp, 400, "M_SERVER_NOT_TRUSTED")


class UntrustedByDefaultTest(IdentityTestCase):
    trust_identity_server = False

    async def test_default_config_contacts_nothing(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.member(alice, room, "invite", id_server=self.ids.name,
                                 id_access_token=ACCESS_TOKEN, medium="email", address=EMAIL)
        self.assertMatrixError(resp, 400, "M_SERVER_NOT_TRUSTED")
        self.assertEqual(self.ids.requests, [])
