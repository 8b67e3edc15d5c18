"""Authorization rule 4.4.1: an ``m.room.member`` invite carrying ``third_party_invite``
is allowed by an identity server's signature over ``{mxid, token}``, checked against the
public keys of the room's ``m.room.third_party_invite`` event with that token."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from homeserver.events.auth import (
    AuthError,
    signed_by_any_key,
    third_party_invite_public_keys,
)
from homeserver.events.hashing import encode_base64
from homeserver.events.model import Event
from homeserver.events.room_versions import V1, V10, V11, V12, RoomVersion
from homeserver.events.signing import generate_signing_key, sign_json
from tests.unit.event_factory import ALICE, BOB, CAROL, DAVE, Room, make_room

IS_NAME = "id.example.org"


def public_key(key: Any) -> str:
    return encode_base64(key.verify_key.encode())


class ThirdPartyInviteRuleTest(unittest.TestCase):
    def setUp(self) -> None:
        self.key = generate_signing_key("0")
        self.ephemeral = generate_signing_key("0")

    def room(self, version: RoomVersion = V10, **tpi_content: Any) -> Room:
        room = make_room(version, join_rule="invite", users={BOB: 0})
        room.send(room.member(ALICE, "invite", BOB))
        room.send(room.member(BOB, "join"))
        content = tpi_content or {
            "display_name": "c...@example.org", "public_key": public_key(self.key),
            "key_validity_url": f"https://{IS_NAME}/_matrix/identity/v2/pubkey/isvalid",
            "public_keys": [{"public_key": public_key(self.key)},
                            {"public_key": public_key(self.ephemeral)}]}
        room.send(room.event("m.room.third_party_invite", ALICE, content, state_key="tok"))
        return room

    def invite(self, room: Room, sender: str = ALICE, target: str = CAROL,
               signed: dict[str, Any] | None = None, key: Any = None) -> Event:
        if signed is None:
            signed = sign_json({"mxid": target, "token": "tok"}, IS_NAME, key or self.key)
        return room.member(sender, "invite", target,
                           third_party_invite={"display_name": "Carol", "signed": signed})

    def forbidden(self, room: Room, event: Event, fragment: str) -> None:
        with self.assertRaises(AuthError) as cm:
            room.check(event)
        self.assertIn(fragment, cm.exception.reason)

    def test_valid_signature_allowed_in_every_version(self) -> None:
        for version in (V1, V10, V11, V12):
            room = self.room(version)
            room.check(self.invite(room))
            # Any of the listed keys will do (the ephemeral one too).
            room.check(self.invite(room, key=self.ephemeral))

    def test_single_public_key_property_is_enough(self) -> None:
        room = self.room(public_key=public_key(self.key))
        room.check(self.invite(room))

    def test_wrong_key_rejected(self) -> None:
        room = self.room()
        self.forbidden(room, self.invite(room, key=generate_signing_key("0")),
                       "signature does not match")

    def test_tampered_signed_block_rejected(self) -> None:
        room = self.room()
        signed = sign_json({"mxid": CAROL, "token": "tok"}, IS_NAME, self.key)
        signed["extra"] = "added after signing"
        self.forbidden(room, self.invite(room, signed=signed), "signature does not match")

    def test_unsigned_or_malformed_rejected(self) -> None:
        room = self.room()
        self.forbidden(room, self.invite(room, signed={"mxid": CAROL, "token": "tok"}),
                       "signature does not match")
        event = room.member(ALICE, "invite", CAROL, third_party_invite={"display_name": "x"})
        self.forbidden(room, event, "not signed")
        event = room.member(ALICE, "invite", CAROL, third_party_invite="nope")
        self.forbidden(room, event, "not signed")
        signed = sign_json({"mxid": CAROL}, IS_NAME, self.key)
        self.forbidden(room, self.invite(room, signed=signed), "lacks mxid or token")
        bad_sigs = {"mxid": CAROL, "token": "tok", "signatures": {IS_NAME: {"ed25519:0": "!!"}}}
        self.forbidden(room, self.invite(room, signed=bad_sigs), "signature does not match")

    def test_mxid_must_be_the_target(self) -> None:
        room = self.room()
        signed = sign_json({"mxid": DAVE, "token": "tok"}, IS_NAME, self.key)
        self.forbidden(room, self.invite(room, signed=signed), "another user")

    def test_unknown_token_rejected(self) -> None:
        room = self.room()
        signed = sign_json({"mxid": CAROL, "token": "other"}, IS_NAME, self.key)
        self.forbidden(room, self.invite(room, signed=signed), "no third-party invite")

    def test_sender_must_have_made_the_third_party_invite(self) -> None:
        room = self.room()
        self.forbidden(room, self.invite(room, sender=BOB), "did not make")

    def test_banned_target_rejected(self) -> None:
        room = self.room()
        room.force(CAROL, "ban")
        self.forbidden(room, self.invite(room), "banned")

    def test_inviter_who_left_may_still_complete_the_invite(self) -> None:
        # As the spec orders the rules: 4.4.1 is decided before the sender's membership.
        room = self.room()
        room.send(room.member(ALICE, "leave"))
        room.check(self.invite(room))

    def test_without_power_to_invite_the_signature_still_decides(self) -> None:
        room = self.room()
        room.send(room.power_levels(users={ALICE: 100}, invite=100))
        room.check(self.invite(room))


class HelpersTest(unittest.TestCase):
    def test_public_keys(self) -> None:
        content = {"public_key": "a", "public_keys": [{"public_key": "b"}, {"x": 1}, "c"]}
        self.assertEqual(third_party_invite_public_keys(content), ["a", "b"])
        self.assertEqual(third_party_invite_public_keys({"public_keys": "nope"}), [])

    def test_signed_by_any_key(self) -> None:
        key, other = generate_signing_key("0"), generate_signing_key("1")
        signed = sign_json({"mxid": CAROL, "token": "t"}, "anything", key)
        self.assertEqual(signed_by_any_key(signed, [public_key(other), public_key(key)]),
                         public_key(key))
        self.assertIsNone(signed_by_any_key(signed, [public_key(other), "not base64!"]))
        self.assertIsNone(signed_by_any_key({"mxid": CAROL}, [public_key(key)]))
