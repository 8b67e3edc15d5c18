"""The authorization rules of room versions 10, 11 and 12 (homeserver.events.auth).

Events are built by hand with a tiny factory (tests/unit/event_factory.py): ids are
arbitrary strings, nothing is hashed or signed cryptographically.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.trial import unittest

from homeserver.events import auth
from homeserver.events.auth import AuthError, check_auth_rules
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import (
    get_named_level,
    get_required_level,
    get_user_power_level,
)
from homeserver.events.room_versions import V10, V11, V12, RoomVersion
from tests.unit.event_factory import ALICE, BOB, CAROL, CREATE, DAVE, MOD, PL, Room, make_room


class AuthTestCase(unittest.TestCase):
    def allowed(self, room: Room, event: Event) -> None:
        room.check(event)

    def forbidden(self, room: Room, event: Event, fragment: str = "") -> AuthError:
        with self.assertRaises(AuthError) as cm:
            room.check(event)
        self.assertIn(fragment, cm.exception.reason)
        return cm.exception


class CreateEventTest(AuthTestCase):
    def check_create(self, room: Room) -> None:
        check_auth_rules(room.create, {}, room.create)

    def forbidden_create(self, room: Room, fragment: str) -> None:
        with self.assertRaises(AuthError) as cm:
            self.check_create(room)
        self.assertIn(fragment, cm.exception.reason)

    def test_valid_create_each_version(self) -> None:
        for version in (V10, V11, V12):
            self.check_create(Room(version))

    def test_prev_events_rejected(self) -> None:
        room = Room(V11)
        room.create.pdu["prev_events"] = ["$other"]
        self.forbidden_create(room, "prev events")

    def test_room_id_domain_must_match_sender_v10_v11(self) -> None:
        for version in (V10, V11):
            room = Room(version)
            room.create.pdu["room_id"] = "!room:evil.test"
            self.forbidden_create(room, "domain")

    def test_v10_requires_creator(self) -> None:
        room = Room(V10)
        del room.create.pdu["content"]["creator"]
        self.forbidden_create(room, "creator")

    def test_v11_needs_no_creator(self) -> None:
        room = Room(V11)
        self.assertNotIn("creator", room.create.content)
        self.check_create(room)

    def test_unknown_room_version_rejected(self) -> None:
        room = Room(V10)
        room.create.pdu["content"]["room_version"] = "99"
        self.forbidden_create(room, "unsupported room version")

    def test_absent_or_mismatched_room_version_rejected(self) -> None:
        room = Room(V10)
        room.create.pdu["content"]["room_version"] = "11"
        self.forbidden_create(room, "does not match")
        del room.create.pdu["content"]["room_version"]
        self.forbidden_create(room, "")

    def test_v12_create_must_not_have_room_id(self) -> None:
        room = Room(V12)
        self.check_create(room)
        room.create.pdu["room_id"] = "!create"
        self.forbidden_create(room, "room id")

    def test_v12_additional_creators_must_be_user_ids(self) -> None:
        for bad in ("@bob:a.test", ["bob"], ["@bob:a.test", 3], ["@:a.test"], ["@bob"]):
            room = Room(V12, additional_creators=bad)
            self.forbidden_create(room, "additional_creators")
        self.check_create(Room(V12, additional_creators=[BOB, CAROL]))

    def test_create_state_key_must_be_empty(self) -> None:
        room = Room(V11)
        room.create.pdu["state_key"] = "x"
        self.forbidden_create(room, "state key")


class RoomConsistencyTest(AuthTestCase):
    def test_v12_room_id_must_be_create_id(self) -> None:
        room = make_room(V12)
        event = room.event("m.room.message", ALICE, {"body": "hi"})
        self.allowed(room, event)
        event.pdu["room_id"] = "!somethingelse"
        self.forbidden(room, event, "create event")

    def test_create_of_another_room_rejected(self) -> None:
        room = make_room(V10)
        other = Room(V10)
        other.create.pdu["room_id"] = "!other:a.test"
        event = room.event("m.room.message", ALICE, {})
        with self.assertRaises(AuthError):
            check_auth_rules(event, {k: v for k, v in room.state.items() if k != CREATE}, other.create)

    def test_auth_event_from_another_room_rejected(self) -> None:
        room = make_room(V11)
        room.state[PL].pdu["room_id"] = "!other:a.test"
        self.forbidden(room, room.event("m.room.message", ALICE, {}), "another room")

    def test_rejected_create_event(self) -> None:
        room = make_room(V12)
        room.create.internal.rejected_reason = "auth"
        self.forbidden(room, room.event("m.room.message", ALICE, {}), "rejected")

    def test_room_version_mismatch(self) -> None:
        room = make_room(V10)
        event = room.event("m.room.message", ALICE, {})
        event.room_version = V11
        self.forbidden(room, event, "room version")


class FederateTest(AuthTestCase):
    def make(self) -> Room:
        room = Room(V11, **{"m.federate": False})
        room.send(room.member(ALICE, "join", prev=[room.create.event_id]))
        room.send(room.event("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key=""))
        return room

    def test_remote_sender_rejected(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(CAROL, "join"), "does not federate")
        self.allowed(room, room.member(BOB, "join"))

    def test_remote_invitee_rejected(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(ALICE, "invite", CAROL), "does not federate")
        self.allowed(room, room.member(ALICE, "invite", BOB))

    def test_federating_room_accepts_remote(self) -> None:
        room = make_room(V11)
        self.allowed(room, room.member(CAROL, "join"))


class AuthTypesTest(unittest.TestCase):
    def test_message_v10_v11_include_create(self) -> None:
        for version in (V10, V11):
            room = make_room(version)
            types = auth.auth_types_for_event(room.event("m.room.message", BOB, {}))
            self.assertEqual(types, {CREATE, PL, ("m.room.member", BOB)})
            self.assertTrue(auth.create_in_auth_events(version))

    def test_v12_excludes_create(self) -> None:
        room = make_room(V12)
        types = auth.auth_types_for_event(room.event("m.room.message", BOB, {}))
        self.assertEqual(types, {PL, ("m.room.member", BOB)})
        self.assertFalse(auth.create_in_auth_events(V12))

    def test_create_has_no_auth_events(self) -> None:
        self.assertEqual(auth.auth_types_for_event(Room(V10).create), set())

    def test_member_join_with_authoriser(self) -> None:
        room = make_room(V10)
        join = room.member(BOB, "join", join_authorised_via_users_server=ALICE)
        self.assertEqual(auth.auth_types_for_event(join), {
            CREATE, PL, ("m.room.member", BOB), ("m.room.join_rules", ""), ("m.room.member", ALICE)})

    def test_invite_targets_and_third_party_token(self) -> None:
        room = make_room(V11)
        invite = room.member(ALICE, "invite", BOB, third_party_invite={"signed": {"token": "tok"}})
        self.assertEqual(auth.auth_types_for_event(invite), {
            CREATE, PL, ("m.room.member", ALICE), ("m.room.member", BOB), ("m.room.join_rules", ""),
            ("m.room.third_party_invite", "tok")})

    def test_knock_needs_join_rules_leave_does_not(self) -> None:
        room = make_room(V12)
        self.assertIn(("m.room.join_rules", ""), auth.auth_types_for_event(room.member(BOB, "knock")))
        leave = auth.auth_types_for_event(room.member(ALICE, "leave", BOB))
        self.assertEqual(leave, {PL, ("m.room.member", ALICE), ("m.room.member", BOB)})

    def test_required_signature_servers(self) -> None:
        room = make_room(V10)
        self.assertEqual(auth.required_signature_servers(room.event("m.room.message", CAROL, {})), {"b.test"})
        join = room.member(CAROL, "join", join_authorised_via_users_server=ALICE)
        self.assertEqual(auth.required_signature_servers(join), {"a.test", "b.test"})


class AuthEventsListTest(unittest.TestCase):
    def cite(self, room: Room, event: Event, keys: list[StateKey]) -> dict[str, Event]:
        events = {room.state[k].event_id: room.state[k] for k in keys}
        event.pdu["auth_events"] = list(events)
        return events

    def test_valid_list(self) -> None:
        room = make_room(V10)
        msg = room.event("m.room.message", ALICE, {})
        events = self.cite(room, msg, [CREATE, PL, ("m.room.member", ALICE)])
        state = auth.auth_state_from_auth_events(msg, events)
        self.assertEqual(set(state), {CREATE, PL, ("m.room.member", ALICE)})
        check_auth_rules(msg, state, state[CREATE])

    def test_duplicate_pair_rejected(self) -> None:
        room = make_room(V10)
        old_pl = room.state[PL]
        room.send(room.power_levels(users={ALICE: 100}, ban=60))
        msg = room.event("m.room.message", ALICE, {})
        events = self.cite(room, msg, [CREATE, PL])
        events[old_pl.event_id] = old_pl
        msg.pdu["auth_events"].append(old_pl.event_id)
        self.assertRaises(AuthError, auth.auth_state_from_auth_events, msg, events)

    def test_unexpected_pair_rejected(self) -> None:
        room = make_room(V10)
        msg = room.event("m.room.message", ALICE, {})
        events = self.cite(room, msg, [CREATE, ("m.room.join_rules", "")])
        with self.assertRaises(AuthError) as cm:
            auth.auth_state_from_auth_events(msg, events)
        self.assertIn("unexpected", cm.exception.reason)

    def test_v12_citing_create_rejected(self) -> None:
        room = make_room(V12)
        msg = room.event("m.room.message", ALICE, {})
        events = self.cite(room, msg, [CREATE, PL])
        self.assertRaises(AuthError, auth.auth_state_from_auth_events, msg, events)
        events = self.cite(room, msg, [PL, ("m.room.member", ALICE)])
        self.assertNotIn(CREATE, auth.auth_state_from_auth_events(msg, events))

    def test_v10_missing_create_rejected(self) -> None:
        room = make_room(V10)
        msg = room.event("m.room.message", ALICE, {})
        events = self.cite(room, msg, [PL])
        with self.assertRaises(AuthError) as cm:
            auth.auth_state_from_auth_events(msg, events)
        self.assertIn("create event is missing", cm.exception.reason)

    def test_rejected_or_missing_auth_event(self) -> None:
        room = make_room(V11)
        msg = room.event("m.room.message", ALICE, {})
        events = self.cite(room, msg, [CREATE, PL])
        room.state[PL].internal.rejected_reason = "auth"
        self.assertRaises(AuthError, auth.auth_state_from_auth_events, msg, events)
        msg.pdu["auth_events"].append("$unknown")
        room.state[PL].internal.rejected_reason = None
        self.assertRaises(AuthError, auth.auth_state_from_auth_events, msg, events)


class JoinTest(AuthTestCase):
    def test_creator_join_after_create(self) -> None:
        for version in (V10, V11, V12):
            room = Room(version)
            self.allowed(room, room.member(ALICE, "join", prev=[room.create.event_id]))

    def test_v10_first_join_uses_creator_field(self) -> None:
        room = Room(V10)
        room.create.pdu["content"]["creator"] = BOB
        self.forbidden(room, room.member(ALICE, "join", prev=[room.create.event_id]))
        self.allowed(room, room.member(BOB, "join", prev=[room.create.event_id]))

    def test_creator_join_later_goes_through_join_rules(self) -> None:
        room = Room(V11)
        room.apply(room.event("m.room.topic", ALICE, {}, state_key=""))
        self.forbidden(room, room.member(ALICE, "join"), "not invited")

    def test_join_for_someone_else_rejected(self) -> None:
        room = make_room(V10)
        self.forbidden(room, room.member(ALICE, "join", BOB), "another user")

    def test_public_join_allowed(self) -> None:
        room = make_room(V11)
        self.allowed(room, room.member(CAROL, "join"))

    def test_invite_only_needs_invite(self) -> None:
        room = make_room(V10, join_rule="invite")
        self.forbidden(room, room.member(BOB, "join"), "not invited")
        room.send(room.member(ALICE, "invite", BOB))
        self.allowed(room, room.member(BOB, "join"))

    def test_missing_join_rules_behaves_as_invite(self) -> None:
        room = make_room(V11, join_rule=None)
        self.forbidden(room, room.member(BOB, "join"))
        room.send(room.member(ALICE, "invite", BOB))
        self.allowed(room, room.member(BOB, "join"))

    def test_banned_user_cannot_rejoin(self) -> None:
        room = make_room(V10)
        room.send(room.member(BOB, "join"))
        room.send(room.member(ALICE, "ban", BOB))
        self.forbidden(room, room.member(BOB, "join"), "banned")

    def test_knock_room_join_needs_invite(self) -> None:
        room = make_room(V11, join_rule="knock")
        self.forbidden(room, room.member(BOB, "join"))
        room.force(BOB, "knock")
        self.forbidden(room, room.member(BOB, "join"))
        room.send(room.member(ALICE, "invite", BOB))
        self.allowed(room, room.member(BOB, "join"))

    def test_unknown_join_rule_rejected(self) -> None:
        room = make_room(V10, join_rule="private")
        self.forbidden(room, room.member(BOB, "join"), "not allowed to join")


class RestrictedJoinTest(AuthTestCase):
    def make(self, rule: str = "restricted", version: RoomVersion = V10, **pl: Any) -> Room:
        room = make_room(version, join_rule=rule, users={MOD: 50}, **pl)
        room.force(MOD, "join")
        return room

    def test_valid_authoriser(self) -> None:
        room = self.make()
        self.allowed(room, room.member(CAROL, "join", join_authorised_via_users_server=MOD,
                                       _signers={"a.test", "b.test"}))

    def test_missing_authoriser(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(CAROL, "join"), "not authorised")

    def test_authoriser_not_joined(self) -> None:
        room = self.make()
        room.force(MOD, "leave")
        self.forbidden(room, room.member(CAROL, "join", join_authorised_via_users_server=MOD,
                                         _signers={"a.test", "b.test"}), "not in the room")

    def test_authoriser_cannot_invite(self) -> None:
        room = self.make(invite=60)
        self.forbidden(room, room.member(CAROL, "join", join_authorised_via_users_server=MOD,
                                         _signers={"a.test", "b.test"}), "cannot invite")

    def test_authoriser_server_must_sign(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(CAROL, "join", join_authorised_via_users_server=MOD),
                       "authorising server")

    def test_invalid_authoriser_id(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(CAROL, "join", join_authorised_via_users_server="mod"))

    def test_invited_user_needs_no_authoriser(self) -> None:
        room = self.make()
        room.send(room.member(MOD, "invite", CAROL))
        self.allowed(room, room.member(CAROL, "join"))

    def test_knock_restricted_join_paths(self) -> None:
        room = self.make("knock_restricted", V11)
        self.forbidden(room, room.member(CAROL, "join"))
        self.allowed(room, room.member(CAROL, "join", join_authorised_via_users_server=MOD,
                                       _signers={"a.test", "b.test"}))
        room.send(room.member(MOD, "invite", DAVE))
        self.allowed(room, room.member(DAVE, "join"))

    def test_banned_user_cannot_use_authoriser(self) -> None:
        room = self.make()
        room.force(CAROL, "ban")
        self.forbidden(room, room.member(CAROL, "join", join_authorised_via_users_server=MOD,
                                         _signers={"a.test", "b.test"}), "banned")


class InviteTest(AuthTestCase):
    def test_invite_by_non_member_rejected(self) -> None:
        room = make_room(V10)
        self.forbidden(room, room.member(BOB, "invite", CAROL), "not in the room")

    def test_invite_by_member_allowed(self) -> None:
        room = make_room(V10)
        room.send(room.member(BOB, "join"))
        self.allowed(room, room.member(BOB, "invite", CAROL))

    def test_invite_level_enforced(self) -> None:
        room = make_room(V11, invite=50)
        room.send(room.member(BOB, "join"))
        self.forbidden(room, room.member(BOB, "invite", CAROL), "power level")
        self.allowed(room, room.member(ALICE, "invite", CAROL))

    def test_invite_joined_or_banned_target_rejected(self) -> None:
        room = make_room(V10)
        room.send(room.member(BOB, "join"))
        self.forbidden(room, room.member(ALICE, "invite", BOB))
        room.send(room.member(ALICE, "ban", BOB))
        self.forbidden(room, room.member(ALICE, "invite", BOB), "banned")

    def test_unsigned_third_party_invite_rejected(self) -> None:
        # The full rule 4.4.1 is tested in test_event_auth_third_party.
        room = make_room(V10)
        room.send(room.event("m.room.third_party_invite", ALICE, {"public_key": "k"}, state_key="tok"))
        invite = room.member(ALICE, "invite", CAROL,
                             third_party_invite={"signed": {"mxid": CAROL, "token": "tok", "signatures": {}}})
        self.forbidden(room, invite, "signature does not match")


class LeaveKickBanTest(AuthTestCase):
    def make(self, version: RoomVersion = V10, **pl: Any) -> Room:
        room = make_room(version, users={MOD: 50}, **pl)
        for user in (MOD, BOB, CAROL):
            room.send(room.member(user, "join"))
        return room

    def test_leave_self_from_join_invite_knock(self) -> None:
        room = self.make()
        self.allowed(room, room.member(BOB, "leave"))
        room.force(DAVE, "invite")
        self.allowed(room, room.member(DAVE, "leave"))
        room.force(DAVE, "knock")
        self.allowed(room, room.member(DAVE, "leave"))

    def test_leave_when_not_in_room_rejected(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(DAVE, "leave"), "not in")
        room.force(DAVE, "leave")
        self.forbidden(room, room.member(DAVE, "leave"))

    def test_leave_after_ban_forbidden(self) -> None:
        room = self.make()
        room.send(room.member(MOD, "ban", BOB))
        self.forbidden(room, room.member(BOB, "leave"))

    def test_kick_requires_kick_level(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(BOB, "leave", CAROL), "kick")
        self.allowed(room, room.member(MOD, "leave", CAROL))

    def test_kick_requires_more_power_than_target(self) -> None:
        room = self.make()
        self.forbidden(room, room.member(MOD, "leave", ALICE), "kick")
        room.send(room.power_levels(users={ALICE: 100, MOD: 50, BOB: 50}))
        self.forbidden(room, room.member(MOD, "leave", BOB), "kick")

    def test_kick_by_non_member_rejected(self) -> None:
        room = self.make()
        room.force(MOD, "leave")
        self.forbidden(room, room.member(MOD, "leave", CAROL), "not in the room")

    def test_kick_level_can_be_raised(self) -> None:
        room = self.make(kick=75)
        self.forbidden(room, room.member(MOD, "leave", CAROL))
        self.allowed(room, room.member(ALICE, "leave", CAROL))

    def test_ban_rules(self) -> None:
        room = self.make()
        self.allowed(room, room.member(MOD, "ban", CAROL))
        self.allowed(room, room.member(MOD, "ban", DAVE))  # not in the room: still bannable
        self.forbidden(room, room.member(BOB, "ban", CAROL), "ban")
        self.forbidden(room, room.member(MOD, "ban", ALICE), "ban")

    def test_ban_by_non_member_rejected(self) -> None:
        room = self.make()
        room.force(MOD, "leave")
        self.forbidden(room, room.member(MOD, "ban", CAROL), "not in the room")

    def test_unban_needs_ban_level(self) -> None:
        room = self.make(ban=75, kick=50)
        room.send(room.member(ALICE, "ban", CAROL))
        self.forbidden(room, room.member(MOD, "leave", CAROL), "unban")
        self.allowed(room, room.member(ALICE, "leave", CAROL))


class KnockTest(AuthTestCase):
    def test_knock_on_knock_room(self) -> None:
        room = make_room(V10, join_rule="knock")
        self.allowed(room, room.member(CAROL, "knock"))

    def test_knock_on_knock_restricted_room(self) -> None:
        room = make_room(V12, join_rule="knock_restricted")
        self.allowed(room, room.member(CAROL, "knock"))

    def test_knock_only_on_knock_rooms(self) -> None:
        for rule in ("public", "invite", "restricted"):
            room = make_room(V11, join_rule=rule)
            self.forbidden(room, room.member(CAROL, "knock"), "knocks")

    def test_knock_for_another_user_rejected(self) -> None:
        room = make_room(V10, join_rule="knock")
        self.forbidden(room, room.member(CAROL, "knock", DAVE), "another user")

    def test_knock_when_banned_invited_or_joined_rejected(self) -> None:
        for membership in ("ban", "invite", "join"):
            room = make_room(V10, join_rule="knock")
            room.force(CAROL, membership)
            self.forbidden(room, room.member(CAROL, "knock"))

    def test_knock_after_leave_allowed(self) -> None:
        room = make_room(V10, join_rule="knock")
        room.force(CAROL, "leave")
        self.allowed(room, room.member(CAROL, "knock"))

    def test_unknown_or_missing_membership(self) -> None:
        room = make_room(V10)
        self.forbidden(room, room.member(BOB, "dance"), "unknown membership")
        event = room.event("m.room.member", BOB, {}, state_key=BOB)
        self.forbidden(room, event, "membership")
        self.forbidden(room, room.event("m.room.member", BOB, {"membership": "join"}))


class SendTest(AuthTestCase):
    def test_message_requires_join(self) -> None:
        room = make_room(V10)
        self.forbidden(room, room.event("m.room.message", BOB, {}), "not in the room")
        room.force(BOB, "invite")
        self.forbidden(room, room.event("m.room.message", BOB, {}), "not in the room")
        room.force(BOB, "join")
        self.allowed(room, room.event("m.room.message", BOB, {}))
        room.force(BOB, "leave")
        self.forbidden(room, room.event("m.room.message", BOB, {}), "not in the room")

    def test_state_needs_state_default(self) -> None:
        room = make_room(V11)
        room.send(room.member(BOB, "join"))
        self.forbidden(room, room.event("m.room.topic", BOB, {}, state_key=""), "power level")
        self.allowed(room, room.event("m.room.topic", ALICE, {}, state_key=""))

    def test_events_default_applies_to_messages(self) -> None:
        room = make_room(V10, events_default=10)
        room.send(room.member(BOB, "join"))
        self.forbidden(room, room.event("m.room.message", BOB, {}), "power level")

    def test_events_override_per_type(self) -> None:
        room = make_room(V10, events={"m.room.topic": 0, "m.reaction": 20})
        room.send(room.member(BOB, "join"))
        self.allowed(room, room.event("m.room.topic", BOB, {}, state_key=""))
        self.forbidden(room, room.event("m.reaction", BOB, {}))

    def test_no_power_levels_event_means_level_zero_for_all(self) -> None:
        room = make_room(V10, with_power_levels=False)
        room.send(room.member(BOB, "join"))
        self.allowed(room, room.event("m.room.topic", BOB, {}, state_key=""))
        self.forbidden(room, room.member(BOB, "leave", ALICE), "kick")
        self.allowed(room, room.member(ALICE, "leave", BOB))

    def test_user_keyed_state(self) -> None:
        room = make_room(V10, state_default=0)
        room.send(room.member(BOB, "join"))
        self.allowed(room, room.event("org.example.status", BOB, {}, state_key=BOB))
        self.forbidden(room, room.event("org.example.status", BOB, {}, state_key=ALICE), "another user")
        self.forbidden(room, room.event("org.example.status", ALICE, {}, state_key=BOB), "another user")

    def test_third_party_invite_state_needs_invite_level(self) -> None:
        room = make_room(V10, invite=50, state_default=0)
        room.send(room.member(BOB, "join"))
        self.forbidden(room, room.event("m.room.third_party_invite", BOB, {}, state_key="t"), "invite")
        self.allowed(room, room.event("m.room.third_party_invite", ALICE, {}, state_key="t"))

    def test_aliases_have_no_special_rules(self) -> None:
        room = make_room(V10)
        room.send(room.member(CAROL, "join"))
        self.forbidden(room, room.event("m.room.aliases", CAROL, {}, state_key="b.test"), "power level")


class PowerLevelsChangeTest(AuthTestCase):
    def make(self, version: RoomVersion = V10, **pl: Any) -> Room:
        room = make_room(version, users={MOD: 50, BOB: 10}, **pl)
        for user in (MOD, BOB):
            room.send(room.member(user, "join"))
        return room

    def test_first_power_levels_event_allowed(self) -> None:
        room = make_room(V10, with_power_levels=False)
        self.allowed(room, room.power_levels(users={ALICE: 100, BOB: 100}))

    def test_non_integer_levels_rejected(self) -> None:
        room = self.make()
        for bad in ({"ban": "50"}, {"kick": True}, {"invite": 1.5}, {"users_default": None}):
            self.forbidden(room, room.power_levels(users={ALICE: 100}, **bad), "integers")

    def test_events_and_notifications_must_be_integer_maps(self) -> None:
        room = self.make()
        self.forbidden(room, room.power_levels(users={ALICE: 100}, events={"m.x": "1"}), "integers")
        self.forbidden(room, room.power_levels(users={ALICE: 100}, events=[1]), "integers")
        self.forbidden(room, room.power_levels(users={ALICE: 100}, notifications={"room": False}))

    def test_users_must_be_valid(self) -> None:
        room = self.make()
        self.forbidden(room, room.power_levels(users={"alice": 100}), "valid user ids")
        self.forbidden(room, room.power_levels(users={ALICE: "100"}), "valid user ids")
        self.forbidden(room, room.power_levels(users=[ALICE]), "object")

    def test_cannot_raise_own_level(self) -> None:
        room = self.make(events={"m.room.power_levels": 50})
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 100, MOD: 51, BOB: 10}), "above")

    def test_cannot_raise_others_above_own(self) -> None:
        room = self.make(events={"m.room.power_levels": 50})
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50, BOB: 51}), "above")
        self.allowed(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50, BOB: 50}))

    def test_cannot_demote_equal_or_higher(self) -> None:
        room = self.make(events={"m.room.power_levels": 50})
        room.send(room.power_levels(users={ALICE: 100, MOD: 50, BOB: 50}, events={"m.room.power_levels": 50}))
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50, BOB: 0}), "at least")
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50}), "at least")
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 0, MOD: 50, BOB: 50}), "at least")

    def test_can_demote_lower_and_self(self) -> None:
        room = self.make(events={"m.room.power_levels": 50})
        levels = {"events": {"m.room.power_levels": 50}}
        self.allowed(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50}, **levels))
        self.allowed(room, room.power_levels(MOD, users={ALICE: 100, MOD: 20, BOB: 10}, **levels))

    def test_named_levels_above_own_cannot_change(self) -> None:
        room = self.make(ban=80, events={"m.room.power_levels": 50})
        users = {ALICE: 100, MOD: 50, BOB: 10}
        events = {"m.room.power_levels": 50}
        self.forbidden(room, room.power_levels(MOD, users=users, events=events, ban=40), "above")
        self.forbidden(room, room.power_levels(MOD, users=users, events=events, ban=80, kick=60), "above")
        self.allowed(room, room.power_levels(MOD, users=users, events=events, ban=80, kick=40))

    def test_removing_named_level_above_own_rejected(self) -> None:
        room = self.make(redact=90, events={"m.room.power_levels": 50})
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50, BOB: 10},
                                               events={"m.room.power_levels": 50}), "above")

    def test_events_entries_above_own_cannot_change(self) -> None:
        room = self.make(events={"m.room.power_levels": 50, "m.room.tombstone": 100})
        users = {ALICE: 100, MOD: 50, BOB: 10}
        self.forbidden(room, room.power_levels(MOD, users=users, events={"m.room.power_levels": 50}), "above")
        self.forbidden(room, room.power_levels(MOD, users=users, events={
            "m.room.power_levels": 50, "m.room.tombstone": 100, "m.room.name": 60}), "above")
        self.allowed(room, room.power_levels(MOD, users=users, events={
            "m.room.power_levels": 50, "m.room.tombstone": 100, "m.room.name": 50}))

    def test_notifications_entries_checked(self) -> None:
        room = self.make(events={"m.room.power_levels": 50}, notifications={"room": 80})
        users = {ALICE: 100, MOD: 50, BOB: 10}
        events = {"m.room.power_levels": 50}
        self.forbidden(room, room.power_levels(MOD, users=users, events=events, notifications={"room": 0}))
        self.allowed(room, room.power_levels(MOD, users=users, events=events, notifications={"room": 80}))

    def test_sender_needs_power_levels_event_level(self) -> None:
        room = self.make(events={"m.room.power_levels": 100})
        self.forbidden(room, room.power_levels(MOD, users={ALICE: 100, MOD: 50, BOB: 10}), "power level")
        room = self.make()  # state_default 50
        self.forbidden(room, room.power_levels(BOB, users={ALICE: 100, MOD: 50, BOB: 10}), "power level")


class RedactionTest(AuthTestCase):
    def make(self, **pl: Any) -> Room:
        room = make_room(V11, users={MOD: 50}, **pl)
        for user in (MOD, BOB, CAROL):
            room.send(room.member(user, "join"))
        return room

    def redaction(self, room: Room, sender: str, target: Event) -> Event:
        return room.event("m.room.redaction", sender, {"redacts": target.event_id})

    def test_redaction_not_gated_by_redact_level_in_auth(self) -> None:
        room = self.make(redact=100)
        target = room.send(room.event("m.room.message", CAROL, {}))
        self.allowed(room, self.redaction(room, BOB, target))

    def test_redaction_gated_by_events_level(self) -> None:
        room = self.make(events={"m.room.redaction": 50})
        target = room.send(room.event("m.room.message", CAROL, {}))
        self.forbidden(room, self.redaction(room, BOB, target), "power level")
        self.allowed(room, self.redaction(room, MOD, target))

    def test_redaction_applied_with_redact_level_or_same_domain(self) -> None:
        room = self.make()
        target = room.send(room.event("m.room.message", CAROL, {}))
        by_mod = self.redaction(room, MOD, target)
        self.assertTrue(auth.redaction_allowed(by_mod, target, room.state, room.create))
        by_bob = self.redaction(room, BOB, target)
        self.assertFalse(auth.redaction_allowed(by_bob, target, room.state, room.create))
        by_dave = self.redaction(room, DAVE, target)
        self.assertTrue(auth.redaction_allowed(by_dave, target, room.state, room.create))

    def test_redaction_of_other_event_or_room_not_applied(self) -> None:
        room = self.make()
        target = room.send(room.event("m.room.message", CAROL, {}))
        other = room.send(room.event("m.room.message", CAROL, {}))
        redaction = self.redaction(room, MOD, other)
        self.assertFalse(auth.redaction_allowed(redaction, target, room.state, room.create))
        other.pdu["room_id"] = "!elsewhere:a.test"
        self.assertFalse(auth.redaction_allowed(redaction, other, room.state, room.create))

    def test_local_redaction_policy(self) -> None:
        room = self.make()
        mine = room.send(room.event("m.room.message", BOB, {}))
        theirs = room.send(room.event("m.room.message", ALICE, {}))
        auth.check_local_redaction(self.redaction(room, BOB, mine), mine, room.state, room.create)
        with self.assertRaises(AuthError):
            auth.check_local_redaction(self.redaction(room, BOB, theirs), theirs, room.state, room.create)
        with self.assertRaises(AuthError):
            auth.check_local_redaction(self.redaction(room, BOB, theirs), None, room.state, room.create)
        auth.check_local_redaction(self.redaction(room, MOD, theirs), theirs, room.state, room.create)
        with self.assertRaises(AuthError) as cm:
            auth.check_local_redaction(self.redaction(room, ALICE, room.create), room.create,
                                       room.state, room.create)
        self.assertIn("create event", cm.exception.reason)


class PowerLevelHelpersTest(unittest.TestCase):
    def test_defaults_without_power_levels_event(self) -> None:
        room = make_room(V10, with_power_levels=False)
        self.assertEqual(get_user_power_level(ALICE, room.state, room.create), 100)
        self.assertEqual(get_user_power_level(BOB, room.state, room.create), 0)
        self.assertEqual([get_named_level(n, room.state) for n in ("ban", "kick", "redact", "invite")],
                         [50, 50, 50, 0])
        self.assertEqual(get_required_level("m.room.topic", True, None), 0)

    def test_defaults_with_power_levels_event(self) -> None:
        self.assertEqual(get_required_level("m.room.topic", True, {}), 50)
        self.assertEqual(get_required_level("m.room.message", False, {}), 0)
        self.assertEqual(get_required_level("m.room.topic", True, {"state_default": 7}), 7)
        self.assertEqual(get_required_level("m.x", False, {"events": {"m.x": 3}, "events_default": 9}), 3)
        room = make_room(V11, users_default=5)
        self.assertEqual(get_user_power_level(BOB, room.state, room.create), 5)
        self.assertEqual(get_user_power_level(ALICE, room.state, room.create), 100)

    def test_v11_creator_has_only_listed_power(self) -> None:
        room = make_room(V11)
        room.send(room.power_levels(users={}))
        self.assertEqual(get_user_power_level(ALICE, room.state, room.create), 0)


class V12CreatorsTest(AuthTestCase):
    def make(self, additional: list[str] | None = None) -> Room:
        room = Room(V12, **({"additional_creators": additional} if additional else {}))
        room.send(room.member(ALICE, "join", prev=[room.create.event_id]))
        room.send(room.power_levels(users={MOD: 100}))
        room.send(room.event("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key=""))
        for user in (MOD, BOB):
            room.send(room.member(user, "join"))
        return room

    def test_creators_have_infinite_power(self) -> None:
        room = self.make([BOB])
        self.assertEqual(get_user_power_level(ALICE, room.state, room.create), math.inf)
        self.assertEqual(get_user_power_level(BOB, room.state, room.create), math.inf)
        self.assertEqual(get_user_power_level(MOD, room.state, room.create), 100)
        no_pl = Room(V12)
        self.assertEqual(get_user_power_level(ALICE, no_pl.state, no_pl.create), math.inf)

    def test_power_levels_cannot_list_creators(self) -> None:
        room = self.make([BOB])
        self.forbidden(room, room.power_levels(users={ALICE: 100}), "creators")
        self.forbidden(room, room.power_levels(users={MOD: 100, BOB: 50}), "creators")
        self.allowed(room, room.power_levels(users={MOD: 100, CAROL: 100}))

    def test_creators_cannot_be_kicked_or_banned(self) -> None:
        room = self.make([BOB])
        self.forbidden(room, room.member(MOD, "leave", ALICE), "kick")
        self.forbidden(room, room.member(MOD, "ban", BOB), "ban")
        self.forbidden(room, room.member(BOB, "ban", ALICE), "ban")

    def test_creator_can_kick_and_demote_admins(self) -> None:
        room = self.make()
        self.allowed(room, room.member(ALICE, "leave", MOD))
        self.allowed(room, room.power_levels(users={MOD: 0}))
        self.allowed(room, room.power_levels(users={MOD: 10 ** 9}))

    def test_admin_cannot_touch_levels_of_creators_by_omission(self) -> None:
        room = self.make()
        # Creators are absent from ``users``; an admin's rewrite leaves them infinite.
        room.send(room.power_levels(MOD, users={MOD: 100}, ban=100))
        self.assertEqual(get_user_power_level(ALICE, room.state, room.create), math.inf)

    def test_additional_creator_has_no_first_join_shortcut(self) -> None:
        room = Room(V12, additional_creators=[BOB])
        self.forbidden(room, room.member(BOB, "join", prev=[room.create.event_id]), "not invited")

    def test_v10_v11_creator_is_not_infinite(self) -> None:
        for version in (V10, V11):
            room = make_room(version, users={MOD: 100})
            room.send(room.member(MOD, "join"))
            self.assertEqual(get_user_power_level(ALICE, room.state, room.create), 100)
            self.forbidden(room, room.member(MOD, "leave", ALICE), "kick")
            self.allowed(room, room.power_levels(MOD, users={ALICE: 100, MOD: 100, CAROL: 100}))

    def test_additional_creators_ignored_before_v12(self) -> None:
        room = Room(V11, additional_creators=[BOB])
        room.send(room.member(ALICE, "join", prev=[room.create.event_id]))
        self.assertEqual(get_user_power_level(BOB, room.state, room.create), 0)
        self.assertEqual(get_user_power_level(ALICE, room.state, room.create), 100)
