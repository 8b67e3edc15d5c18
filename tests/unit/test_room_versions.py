"""Room versions 1-12 (homeserver.events.room_versions and everything that reads it):
the feature table against the spec's room version pages, the redaction algorithm,
event id formats and hashed references, and the auth rules that differ per version.
The spec's official signing vectors (room versions "1" and "3") are checked with
those versions' real rules."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.trial import unittest

from homeserver.events import auth
from homeserver.events.auth import AuthError
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import (
    add_content_hash,
    compute_event_id,
    decode_base64,
    encode_base64,
    event_reference,
    reference_hash,
)
from homeserver.events.model import Event
from homeserver.events.power_levels import get_named_level, get_user_power_level, parse_level
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import (
    ALL_ROOM_VERSIONS,
    KNOWN_ROOM_VERSIONS,
    V1,
    V2,
    V3,
    V4,
    V5,
    V6,
    V7,
    V8,
    V9,
    V10,
    V11,
    V12,
    EventFormat,
    RoomVersion,
    get_room_version,
    supports_join_rule,
)
from homeserver.events.signing import (
    SignatureError,
    generate_signing_key,
    get_verify_key,
    sign_event,
    signing_key_from_seed,
    verify_event_signature,
)
from tests.unit.event_factory import ALICE, BOB, CAROL, PL, Room, make_room
from tests.unit.test_event_crypto import VECTORS, VECTORS_PATH

# The spec's feature matrix, one row per field, one column per version 1..12.
_EXPECTED: dict[str, list[Any]] = {
    "event_format": [1, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3],
    "state_res": ["v1"] + ["v2"] * 10 + ["v2.1"],
    "redaction_auth_rule": [True, True] + [False] * 10,
    "enforce_key_validity": [False] * 4 + [True] * 8,
    "special_case_aliases": [True] * 5 + [False] * 7,
    "strict_canonical_json": [False] * 5 + [True] * 7,
    "limit_notifications_power_levels": [False] * 5 + [True] * 7,
    "knock": [False] * 6 + [True] * 6,
    "restricted_joins": [False] * 7 + [True] * 5,
    "redaction_keeps_authorising_user": [False] * 8 + [True] * 4,
    "knock_restricted": [False] * 9 + [True] * 3,
    "integer_power_levels": [False] * 9 + [True] * 3,
    "redaction_v11": [False] * 10 + [True] * 2,
    "implicit_room_creator": [False] * 10 + [True] * 2,
    "room_id_is_create_hash": [False] * 11 + [True],
    "creators_have_infinite_power": [False] * 11 + [True],
    "stability": ["stable"] * 12,
}


class TableTest(unittest.TestCase):
    def test_every_version_is_known(self) -> None:
        self.assertEqual(list(KNOWN_ROOM_VERSIONS), [str(n) for n in range(1, 13)])
        self.assertEqual(ALL_ROOM_VERSIONS, (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12))
        for bad in ("13", "0", "01", "1.0", " 1", "", None, 1, ["1"]):
            self.assertIsNone(get_room_version(bad))

    def test_features_match_the_spec(self) -> None:
        for field, column in _EXPECTED.items():
            got = [getattr(v, field) for v in ALL_ROOM_VERSIONS]
            self.assertEqual(got, column, field)

    def test_join_rules(self) -> None:
        first = {"knock": 7, "restricted": 8, "knock_restricted": 10, "public": 1, "invite": 1,
                 "private": 1, "custom": 1}
        for rule, since in first.items():
            for version in ALL_ROOM_VERSIONS:
                self.assertEqual(supports_join_rule(version, rule),
                                 int(version.identifier) >= since, (rule, version.identifier))
        self.assertTrue(supports_join_rule(V1, ["knock"]))  # not a rule: left to auth


def _event(etype: str, content: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"type": etype, "content": content, "sender": ALICE, "room_id": "!r:a.test",
            "origin": "a.test", "origin_server_ts": 1, "depth": 2, "prev_events": [],
            "auth_events": [], "unsigned": {"age": 1}, "prev_state": [], "membership": "join",
            **top}


class RedactionTest(unittest.TestCase):
    def content_after(self, version: RoomVersion, etype: str, content: dict[str, Any]) -> dict[str, Any]:
        return prune_event_dict(_event(etype, content, state_key=""), version)["content"]

    def test_aliases_kept_in_v1_to_v5(self) -> None:
        for version in ALL_ROOM_VERSIONS:
            kept = self.content_after(version, "m.room.aliases", {"aliases": ["#a:a.test"], "x": 1})
            want = {"aliases": ["#a:a.test"]} if int(version.identifier) <= 5 else {}
            self.assertEqual(kept, want, version.identifier)

    def test_join_rules_allow_from_v8(self) -> None:
        content = {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1}
        for version in ALL_ROOM_VERSIONS:
            kept = self.content_after(version, "m.room.join_rules", content)
            want = {"join_rule", "allow"} if int(version.identifier) >= 8 else {"join_rule"}
            self.assertEqual(set(kept), want, version.identifier)

    def test_authorising_user_from_v9(self) -> None:
        content = {"membership": "join", "join_authorised_via_users_server": BOB, "displayname": "A"}
        for version in ALL_ROOM_VERSIONS:
            kept = self.content_after(version, "m.room.member", content)
            want = {"membership"} | ({"join_authorised_via_users_server"}
                                     if int(version.identifier) >= 9 else set())
            self.assertEqual(set(kept), want, version.identifier)

    def test_top_level_and_create(self) -> None:
        pdu = _event("m.room.create", {"creator": ALICE, "room_version": "1"}, state_key="",
                     event_id="$x:a.test", redacts="$y:a.test")
        for version in ALL_ROOM_VERSIONS:
            out = prune_event_dict(pdu, version)
            old = int(version.identifier) <= 10
            self.assertEqual("origin" in out and "membership" in out and "prev_state" in out, old)
            self.assertEqual(out["event_id"], "$x:a.test")
            self.assertNotIn("unsigned", out)
            self.assertNotIn("redacts", out)
            self.assertEqual(out["content"], {"creator": ALICE} if old else pdu["content"])

    def test_power_levels_invite_from_v11(self) -> None:
        content = {"ban": 50, "invite": 0, "notifications": {"room": 50}, "users": {ALICE: 100}}
        for version in ALL_ROOM_VERSIONS:
            kept = self.content_after(version, "m.room.power_levels", content)
            self.assertEqual("invite" in kept, int(version.identifier) >= 11)
            self.assertNotIn("notifications", kept)


class EventFormatTest(unittest.TestCase):
    def test_v1_v2_ids_are_read_from_the_pdu(self) -> None:
        pdu = add_content_hash(_event("m.room.message", {"body": "x"}, event_id="$abc:a.test"))
        for version in (V1, V2):
            self.assertEqual(compute_event_id(pdu, version), "$abc:a.test")
            for bad in ({}, {"event_id": 5}, {"event_id": "abc:a.test"}, {"event_id": "$abc"}):
                with self.assertRaises(ValueError):
                    compute_event_id({**pdu, **bad} if bad else _event("m.room.message", {}), version)

    def test_v3_standard_v4_urlsafe(self) -> None:
        # Find an event whose reference hash has a character where the alphabets differ.
        for depth in range(200):
            pdu = add_content_hash(_event("m.room.message", {"n": depth}))
            digest = hashlib.sha256(encode_canonical_json(
                {k: v for k, v in prune_event_dict(pdu, V3).items() if k != "signatures"})).digest()
            std = encode_base64(digest)
            if "+" in std or "/" in std:
                break
        else:
            self.fail("no hash with + or / in 200 tries")
        self.assertEqual(compute_event_id(pdu, V3), "$" + std)
        self.assertEqual(compute_event_id(pdu, V4), "$" + std.replace("+", "-").replace("/", "_"))
        self.assertEqual(compute_event_id(pdu, V5), compute_event_id(pdu, V4))
        self.assertEqual(decode_base64(compute_event_id(pdu, V3)[1:]), digest)

    def test_references(self) -> None:
        pdu = add_content_hash(_event("m.room.message", {}, event_id="$abc:a.test"))
        ref = event_reference(pdu, V1)
        self.assertEqual(ref, ["$abc:a.test", {"sha256": encode_base64(reference_hash(pdu, V1))}])
        plain = add_content_hash(_event("m.room.message", {}))
        self.assertEqual(event_reference(plain, V4), compute_event_id(plain, V4))

    def test_event_accessors_read_both_formats(self) -> None:
        pair = {"prev_events": [["$p:a.test", {"sha256": "x"}]],
                "auth_events": [["$c:a.test", {"sha256": "y"}], ["$m:a.test", {}]]}
        event = Event("$e:a.test", _event("m.room.message", {}, **pair), V1)
        self.assertEqual(event.prev_event_ids, ["$p:a.test"])
        self.assertEqual(event.auth_event_ids, ["$c:a.test", "$m:a.test"])
        event = Event("$e", _event("m.room.message", {}, prev_events=["$p"], auth_events=["$c"]), V10)
        self.assertEqual((event.prev_event_ids, event.auth_event_ids), (["$p"], ["$c"]))
        broken = Event("$e", _event("m.room.message", {}, prev_events=[[], 5, [7], "$ok"],
                                    auth_events="nope"), V1)
        self.assertEqual((broken.prev_event_ids, broken.auth_event_ids), (["$ok"], []))

    def test_sign_and_verify_each_version(self) -> None:
        key = generate_signing_key("k")
        for version in ALL_ROOM_VERSIONS:
            extra = {"event_id": "$v:a.test"} if version.event_format == EventFormat.V1 else {}
            signed = sign_event(_event("m.room.message", {"body": "hi"}, **extra), "a.test", key, version)
            verify_event_signature(signed, "a.test", get_verify_key(key), version)
            if extra:  # the event id is signed: changing it breaks the signature
                moved = {**signed, "event_id": "$w:a.test"}
                with self.assertRaises(SignatureError):
                    verify_event_signature(moved, "a.test", get_verify_key(key), version)


class SpecVectorsV1V3Test(unittest.TestCase):
    """The spec's event signing vectors, with room versions "1" and "3" themselves."""

    def setUp(self) -> None:
        if VECTORS is None:
            raise unittest.SkipTest(f"spec test vectors not found at {VECTORS_PATH}")
        self.cases = {c["room_version"]: c for c in VECTORS["event_signing"]}
        key = VECTORS["signing_key"]
        self.server = key["server_name"]
        self.key = signing_key_from_seed(decode_base64(key["seed_base64"]),
                                         key["key_id"].split(":", 1)[1])

    def check(self, identifier: str) -> dict[str, Any]:
        case = self.cases[identifier]
        version = get_room_version(identifier)
        assert version is not None
        self.assertEqual(sign_event(case["input"], self.server, self.key, version), case["output"])
        self.assertEqual(prune_event_dict(case["output"], version), case["derived"]["redacted_output"])
        self.assertEqual(encode_base64(reference_hash(case["output"], version)),
                         case["derived"]["reference_hash_sha256"])
        verify_event_signature(case["output"], self.server, get_verify_key(self.key), version)
        return case

    def test_v1(self) -> None:
        case = self.check("1")
        self.assertEqual(compute_event_id(case["output"], V1), case["input"]["event_id"])
        self.assertEqual(compute_event_id(case["output"], V2), case["input"]["event_id"])

    def test_v3(self) -> None:
        case = self.check("3")
        self.assertEqual(compute_event_id(case["output"], V3),
                         "$" + case["derived"]["reference_hash_sha256"])


class AuthPerVersionTest(unittest.TestCase):
    def forbidden(self, room: Room, event: Event, fragment: str = "") -> None:
        with self.assertRaises(AuthError) as cm:
            room.check(event)
        self.assertIn(fragment, cm.exception.reason)

    def test_aliases_special_case_v1_to_v5(self) -> None:
        for version in ALL_ROOM_VERSIONS[:6]:
            room = make_room(version)
            # CAROL (b.test) is not in the room: v1-v5 still allow her server's entry.
            own = room.event("m.room.aliases", CAROL, {"aliases": []}, state_key="b.test")
            other = room.event("m.room.aliases", ALICE, {"aliases": []}, state_key="b.test")
            if version.special_case_aliases:
                room.check(own)
                self.forbidden(room, other, "server name")
                self.forbidden(room, room.event("m.room.aliases", ALICE, {}), "state event")
            else:
                self.forbidden(room, own, "not in the room")
                room.check(other)  # v6: an ordinary state event

    def test_string_power_levels(self) -> None:
        for version in ALL_ROOM_VERSIONS[:12]:
            room = make_room(version)
            if version.creators_have_infinite_power:
                continue
            stringy = room.power_levels(users={ALICE: "100", BOB: " +050 "}, ban="75")
            if version.integer_power_levels:
                self.forbidden(room, stringy, "integers")
                continue
            room.send(stringy)
            self.assertEqual(get_user_power_level(BOB, room.state, room.create), 50)
            self.assertEqual(get_user_power_level(ALICE, room.state, room.create), 100)
            self.assertEqual(get_named_level("ban", room.state), 75)
            self.forbidden(room, room.power_levels(users={ALICE: 100, BOB: "5x"}), "integers")
            # Bob (50) cannot change the ban level (75), which he is below.
            room.force(BOB, "join")
            self.forbidden(room, room.power_levels(BOB, users={ALICE: "100", BOB: "50"}, ban="40"),
                           "above")

    def test_float_power_levels_v1_to_v5(self) -> None:
        for version in ALL_ROOM_VERSIONS[:10]:
            room = make_room(version)
            floaty = room.power_levels(users={ALICE: 100, BOB: 50.57})
            if version.strict_canonical_json:
                self.forbidden(room, floaty, "integers")
            else:
                room.send(floaty)
                self.assertEqual(get_user_power_level(BOB, room.state, room.create), 50)

    def test_parse_level(self) -> None:
        for value, want in ((5, 5), ("5", 5), (" -07 ", -7), ("+3", 3), (2.9, 2), (-2.9, -2),
                            ("1.0", None), ("", None), ("1e3", None), (True, None), (None, None),
                            (float("inf"), None), ("9" * 300, None), ([1], None)):
            self.assertEqual(parse_level(value), want, value)

    def test_notifications_limited_from_v6(self) -> None:
        for version in (V5, V6):
            room = make_room(version, users={BOB: 50})
            room.force(BOB, "join")
            change = room.power_levels(BOB, users={ALICE: 100, BOB: 50},
                                       notifications={"room": 75})
            if version.limit_notifications_power_levels:
                self.forbidden(room, change, "above")
            else:
                room.check(change)

    def test_knock_from_v7(self) -> None:
        for version in (V6, V7):
            room = make_room(version, join_rule="knock")
            knock = room.member(BOB, "knock")
            if version.knock:
                room.check(knock)
            else:
                self.forbidden(room, knock, "unknown membership")
                self.forbidden(room, room.member(BOB, "join"), "not allowed")

    def test_knock_leave_only_where_knock_exists(self) -> None:
        room = make_room(V6)
        room.force(BOB, "knock")  # only possible through a bug or a forged state
        self.forbidden(room, room.member(BOB, "leave"), "not in")
        room = make_room(V7)
        room.force(BOB, "knock")
        room.check(room.member(BOB, "leave"))

    def test_restricted_from_v8(self) -> None:
        for version in (V7, V8):
            room = make_room(version, join_rule="restricted")
            join = room.member(BOB, "join", join_authorised_via_users_server=ALICE,
                               _signers={"a.test"})
            if version.restricted_joins:
                room.check(join)
            else:
                self.forbidden(room, join, "not allowed")

    def test_authorising_server_signature_only_from_v8(self) -> None:
        for version in (V7, V8):
            room = make_room(version, join_rule="public")
            join = room.member(CAROL, "join", join_authorised_via_users_server=ALICE,
                               _signers={"b.test"})
            if version.restricted_joins:
                self.forbidden(room, join, "authorising server")
                self.assertIn("a.test", auth.required_signature_servers(join))
            else:
                room.check(join)
                self.assertNotIn("a.test", auth.required_signature_servers(join))

    def test_v1_event_id_domain_must_sign(self) -> None:
        room = make_room(V1)
        event = room.event("m.room.message", CAROL, {})
        event = Event("$x:c.test", event.pdu, V1)
        self.assertEqual(auth.required_signature_servers(event), {"b.test", "c.test"})
        event = Event("$x", room.event("m.room.message", CAROL, {}).pdu, V3)
        self.assertEqual(auth.required_signature_servers(event), {"b.test"})

    def test_redaction_rule_v1_v2(self) -> None:
        for version in (V1, V2, V3):
            room = make_room(version)
            room.force(CAROL, "join")

            def redaction(redacts: str, room: Room = room) -> Event:
                ev = room.event("m.room.redaction", CAROL, {}, redacts=redacts)
                return Event("$red:b.test", ev.pdu, room.version)
            same_server = redaction("$msg:b.test")
            other_server = redaction("$msg:a.test")
            room.check(same_server)
            if version.redaction_auth_rule:
                self.forbidden(room, other_server, "redact")
            else:
                room.check(other_server)  # v3+: decided when applied
            target = Event("$msg:a.test", room.event("m.room.message", ALICE, {}).pdu, room.version)
            self.assertEqual(auth.redaction_allowed(other_server, target, room.state, room.create),
                             version.redaction_auth_rule)

    def test_create_room_version_must_match(self) -> None:
        for version in ALL_ROOM_VERSIONS:
            room = Room(version)
            auth.check_auth_rules(room.create, {}, room.create)
        room = Room(V1)
        del room.create.pdu["content"]["room_version"]  # absent means "1"
        auth.check_auth_rules(room.create, {}, room.create)
        room = Room(V2)
        del room.create.pdu["content"]["room_version"]
        with self.assertRaises(AuthError):
            auth.check_auth_rules(room.create, {}, room.create)
        self.assertIn(PL, make_room(V1).state)
