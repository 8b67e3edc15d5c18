"""The cryptographic core of events: canonical JSON, hashes, ids, redaction, signatures.

The spec's official vectors (shared/conformance/vectors.json, beside the repo) are checked
when present; the hand-written cases cover what the vectors do not (v11/v12 rules, v12
room ids, tampering, strict number handling, key files).
"""

from __future__ import annotations

import copy
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from homeserver.events.canonical_json import encode_canonical_json, parse_json_value
from homeserver.events.hashing import (
    add_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_room_id,
    decode_base64,
    encode_base64,
    reference_hash,
)
from homeserver.events.redaction import prune_event_dict, redacted_event_for_client
from homeserver.events.room_versions import V10, V11, V12, get_room_version
from homeserver.events.signing import (
    SignatureError,
    check_content_hash,
    generate_signing_key,
    get_verify_key,
    key_id,
    load_or_generate_signing_key,
    read_signing_key_file,
    sign_event,
    sign_json,
    signing_key_from_seed,
    verify_event_signature,
    verify_signed_json,
    write_signing_key_file,
)

# A copy of the spec's vectors ships with the tests (derived from matrix-org/matrix-spec,
# Apache-2.0); the shared/ original beside the repo is used when present.
_SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "vectors.json"
VECTORS_PATH = _SHARED if _SHARED.exists() else (
    Path(__file__).resolve().parents[1] / "data" / "spec_vectors.json")


def _load_vectors() -> dict[str, Any] | None:
    try:
        with open(VECTORS_PATH, encoding="utf-8") as fh:
            return json.load(fh)  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


VECTORS = _load_vectors()


def _message(**extra: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "room_id": "!r:example.org", "type": "m.room.message", "sender": "@a:example.org",
        "origin": "example.org", "origin_server_ts": 1_700_000_000_000, "depth": 5,
        "prev_events": ["$p"], "auth_events": ["$a1", "$a2"],
        "content": {"msgtype": "m.text", "body": "hello"},
    }
    pdu.update(extra)
    return pdu


class SpecVectorsTest(unittest.TestCase):
    """The official vectors of the spec appendices, against our own functions."""

    def setUp(self) -> None:
        if VECTORS is None:
            raise unittest.SkipTest(f"spec test vectors not found at {VECTORS_PATH} "
                                    "(shared/conformance is beside "
                                    "the repository in the project workspace)")
        self.v = VECTORS
        key = self.v["signing_key"]
        self.server = key["server_name"]
        self.key = signing_key_from_seed(decode_base64(key["seed_base64"]), key["key_id"].split(":", 1)[1])

    def test_unpadded_base64(self) -> None:
        for case in self.v["unpadded_base64"]:
            data = case["input"].encode("utf-8")
            self.assertEqual(encode_base64(data), case["output"])
            self.assertEqual(decode_base64(case["output"]), data)

    def test_canonical_json(self) -> None:
        for case in self.v["canonical_json"]:
            want = case["output"].encode("utf-8")
            self.assertEqual(encode_canonical_json(parse_json_value(case["input_text"])), want)
            # Also from the stdlib parser, which reads 1e10 as a float.
            self.assertEqual(encode_canonical_json(json.loads(case["input_text"])), want)

    def test_public_key(self) -> None:
        self.assertEqual(encode_base64(bytes(get_verify_key(self.key))),
                         self.v["signing_key"]["derived_public_key_base64"])
        self.assertEqual(key_id(self.key), self.v["signing_key"]["key_id"])

    def test_json_signing(self) -> None:
        for case in self.v["json_signing"]:
            self.assertEqual(sign_json(copy.deepcopy(case["input"]), self.server, self.key), case["output"])
            verify_signed_json(case["output"], self.server, get_verify_key(self.key))

    def test_event_signing(self) -> None:
        # Each vector names its room version: "1" (an event carrying its event_id) and
        # "3"; both use the pre-v6 redaction rules, which keep ``origin``.
        for case in self.v["event_signing"]:
            version = get_room_version(case.get("room_version", "1"))
            assert version is not None
            self.assertEqual(encode_base64(compute_content_hash(case["input"])),
                             case["output"]["hashes"]["sha256"])
            self.assertEqual(sign_event(case["input"], self.server, self.key, version), case["output"])
            self.assertEqual(prune_event_dict(case["output"], version), case["derived"]["redacted_output"])
            self.assertEqual(encode_base64(reference_hash(case["output"], version)),
                             case["derived"]["reference_hash_sha256"])
            verify_event_signature(case["output"], self.server, get_verify_key(self.key), version)
            self.assertTrue(check_content_hash(case["output"]))

    def test_v11_rules_do_not_reproduce_the_vectors(self) -> None:
        """v11 drops ``origin``, so the published signatures do not verify under it."""
        case = self.v["event_signing"][0]
        self.assertNotIn("origin", prune_event_dict(case["output"], V11))
        with self.assertRaises(SignatureError):
            verify_event_signature(case["output"], self.server, get_verify_key(self.key), V11)


class CanonicalJsonTest(unittest.TestCase):
    def test_exponent_integers_become_ints(self) -> None:
        self.assertEqual(parse_json_value('{"b": 1e10, "c": 2.0, "d": 1E2, "e": 5e-0}'),
                         {"b": 10_000_000_000, "c": 2, "d": 100, "e": 5})
        self.assertEqual(encode_canonical_json({"b": 1e10}), b'{"b":10000000000}')
        self.assertIsInstance(parse_json_value("1e10"), int)

    def test_negative_zero(self) -> None:
        self.assertEqual(encode_canonical_json(parse_json_value('{"a": -0}')), b'{"a":0}')
        self.assertEqual(encode_canonical_json(parse_json_value('{"a": -0.0}')), b'{"a":0}')
        self.assertEqual(encode_canonical_json({"a": -0.0}), b'{"a":0}')

    def test_unicode(self) -> None:
        self.assertEqual(encode_canonical_json(parse_json_value('{"a": "\\u65E5"}')),
                         '{"a":"日"}'.encode())
        # Non-ASCII is raw UTF-8; control characters, quote and backslash are escaped.
        self.assertEqual(encode_canonical_json({"a": "é\n\"\\\x00/"}),
                         '{"a":"é\\n\\"\\\\\\u0000/"}'.encode())

    def test_key_order_is_by_code_point(self) -> None:
        # U+FF01 sorts before U+1F600 by code point (UTF-16 order would differ).
        self.assertEqual(encode_canonical_json({"\U0001F600": 1, "\uFF01": 2, "b": 3, "a": 4, "B": 5}),
                         '{"B":5,"a":4,"b":3,"！":2,"😀":1}'.encode())
        self.assertEqual(encode_canonical_json({"b": {"d": 1, "c": [3, {"f": 1, "e": 2}]}, "a": None}),
                         b'{"a":null,"b":{"c":[3,{"e":2,"f":1}],"d":1}}')

    def test_floats_rejected(self) -> None:
        for value in (1.5, float("nan"), float("inf"), -0.25):
            with self.assertRaises(ValueError):
                encode_canonical_json({"a": [value]})
        for text in ('{"a": 1.5}', '{"a": 1e-5}', '{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}'):
            with self.assertRaises(ValueError):
                parse_json_value(text)

    def test_big_integers_rejected(self) -> None:
        self.assertEqual(encode_canonical_json([2**53 - 1, -(2**53) + 1]),
                         b"[9007199254740991,-9007199254740991]")
        for value in (2**53, -(2**53), 10**400):
            with self.assertRaises(ValueError):
                encode_canonical_json({"a": value})
        for text in ("9007199254740992", "-9007199254740992", "1e16", "9" * 5000, "1e999999999",
                     "-1e999999999"):
            with self.assertRaises(ValueError):
                parse_json_value(text)
        self.assertEqual(parse_json_value("9007199254740991"), 2**53 - 1)
        self.assertEqual(parse_json_value("9.007199254740991e15"), 2**53 - 1)

    def test_other_strictness(self) -> None:
        self.assertEqual(encode_canonical_json({"t": True, "f": False}), b'{"f":false,"t":true}')
        self.assertEqual(encode_canonical_json((1, 2)), b"[1,2]")
        with self.assertRaises(ValueError):
            encode_canonical_json({1: "a"})
        with self.assertRaises(ValueError):
            encode_canonical_json({"a": b"bytes"})
        with self.assertRaises(ValueError):
            encode_canonical_json({"a": "\ud800"})  # lone surrogate
        with self.assertRaises(ValueError):
            parse_json_value('{"a": 1, "a": 2}')
        self.assertEqual(parse_json_value('{"a": 1, "a": 2}', reject_duplicate_keys=False), {"a": 2})
        with self.assertRaises(ValueError):
            parse_json_value(b'{"a": "\xff"}')
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        with self.assertRaises(ValueError):
            encode_canonical_json(deep)

    def test_no_copy_without_floats(self) -> None:
        from homeserver.events.canonical_json import _normalise
        value = {"a": [1, {"b": "c"}]}
        self.assertIs(_normalise(value), value)


class Base64Test(unittest.TestCase):
    def test_alphabets_and_padding(self) -> None:
        data = bytes(range(250, 256)) + b"\xfb\xff"
        self.assertEqual(decode_base64(encode_base64(data)), data)
        self.assertEqual(decode_base64(encode_base64(data, urlsafe=True)), data)
        self.assertEqual(decode_base64("Zm8="), b"fo")
        self.assertEqual(decode_base64("Zm8"), b"fo")
        self.assertNotIn("=", encode_base64(b"fo"))

    def test_strict(self) -> None:
        for bad in ("Zm9v!", "Z", "Zm8==", "Zm===", "+_8", "Zm 9v", "Zm8=x"):
            with self.assertRaises(ValueError, msg=bad):
                decode_base64(bad)


class HashesAndIdsTest(unittest.TestCase):
    def test_content_hash_ignores_unsigned_signatures_hashes(self) -> None:
        base = compute_content_hash(_message())
        self.assertEqual(len(base), 32)
        noisy = _message(unsigned={"age": 5}, signatures={"x": {"ed25519:1": "sig"}}, hashes={"sha256": "h"})
        self.assertEqual(compute_content_hash(noisy), base)
        self.assertNotEqual(compute_content_hash(_message(content={"body": "other"})), base)

    def test_add_content_hash(self) -> None:
        pdu = _message(hashes={"sha256": "old", "other": "x"})
        self.assertIs(add_content_hash(pdu), pdu)
        self.assertEqual(pdu["hashes"], {"sha256": encode_base64(compute_content_hash(pdu))})
        self.assertTrue(check_content_hash(pdu))

    def test_event_id(self) -> None:
        key = generate_signing_key("k1")
        signed = sign_event(_message(), "example.org", key, V11)
        event_id = compute_event_id(signed, V11)
        self.assertTrue(event_id.startswith("$"))
        self.assertEqual(len(event_id), 44)
        self.assertEqual(event_id, "$" + encode_base64(reference_hash(signed, "11"), urlsafe=True))
        self.assertNotIn("+", event_id)
        self.assertNotIn("/", event_id)
        # unsigned and signatures are not covered...
        self.assertEqual(compute_event_id({**signed, "unsigned": {"age": 1}}, V11), event_id)
        self.assertEqual(compute_event_id({**signed, "signatures": {}}, V11), event_id)
        # ...but the content is, through the content hash.
        other = sign_event(_message(content={"body": "changed"}), "example.org", key, V11)
        self.assertNotEqual(compute_event_id(other, V11), event_id)
        # Without a content hash a message's content would not reach the id at all.
        self.assertEqual(compute_event_id(_message(content={"a": 1}), V11),
                         compute_event_id(_message(content={"a": 2}), V11))

    def test_event_id_depends_on_redaction_rules(self) -> None:
        pdu = add_content_hash(_message())
        self.assertNotEqual(compute_event_id(pdu, V10), compute_event_id(pdu, V11))  # origin
        self.assertEqual(compute_event_id(pdu, V11), compute_event_id(pdu, V12))

    def test_unknown_room_version(self) -> None:
        for version in ("13", "", "0", "1.0", "10 "):
            with self.assertRaises(ValueError):
                compute_event_id(_message(), version)

    def test_v12_room_id(self) -> None:
        key = generate_signing_key("k1")
        create = {
            "type": "m.room.create", "state_key": "", "sender": "@alice:example.org",
            "content": {"room_version": "12"}, "origin_server_ts": 1, "depth": 1,
            "prev_events": [], "auth_events": [],
        }
        signed = sign_event(create, "example.org", key, V12)
        room_id = compute_room_id(signed)
        self.assertTrue(room_id.startswith("!"))
        self.assertEqual(len(room_id), 44)
        self.assertNotIn(":", room_id)
        self.assertEqual(room_id[1:], compute_event_id(signed, V12)[1:])
        self.assertEqual(compute_room_id({**signed, "unsigned": {"age": 3}}), room_id)
        # The whole create content is kept by v11+ redaction, so it is bound to the id.
        more = sign_event({**create, "content": {"room_version": "12", "additional_creators": ["@b:x"]}},
                          "example.org", key, V12)
        self.assertNotEqual(compute_room_id(more), room_id)
        with self.assertRaises(ValueError):
            compute_room_id({**signed, "room_id": room_id})
        with self.assertRaises(ValueError):
            compute_room_id({**signed, "type": "m.room.message"})
        with self.assertRaises(ValueError):
            compute_room_id(signed, V11)


class RedactionTest(unittest.TestCase):
    def test_top_level_v10_vs_v11(self) -> None:
        pdu = _message(membership="join", prev_state=[], redacts="$x", unsigned={"age": 1},
                       hashes={"sha256": "h"}, signatures={}, extra="dropped")
        v10 = prune_event_dict(pdu, V10)
        v11 = prune_event_dict(pdu, V11)
        for key in ("origin", "membership", "prev_state"):
            self.assertIn(key, v10)
            self.assertNotIn(key, v11)
        for out in (v10, v11):
            for key in ("unsigned", "redacts", "extra"):
                self.assertNotIn(key, out)
            self.assertEqual(out["content"], {})
            for key in ("room_id", "type", "sender", "origin_server_ts", "depth", "prev_events",
                        "auth_events", "hashes", "signatures"):
                self.assertIn(key, out)
        self.assertEqual(prune_event_dict(pdu, V12), v11)

    def test_create(self) -> None:
        pdu = _message(type="m.room.create", state_key="",
                       content={"creator": "@a:example.org", "room_version": "10", "m.federate": False})
        self.assertEqual(prune_event_dict(pdu, V10)["content"], {"creator": "@a:example.org"})
        self.assertEqual(prune_event_dict(pdu, V11)["content"], pdu["content"])

    def test_power_levels(self) -> None:
        content = {"ban": 50, "events": {}, "events_default": 0, "invite": 0, "kick": 50, "redact": 50,
                   "state_default": 50, "users": {}, "users_default": 0, "notifications": {"room": 50}}
        pdu = _message(type="m.room.power_levels", state_key="", content=content)
        v10 = prune_event_dict(pdu, V10)["content"]
        v11 = prune_event_dict(pdu, V11)["content"]
        self.assertNotIn("invite", v10)
        self.assertEqual(v11["invite"], 0)
        self.assertNotIn("notifications", v10)
        self.assertNotIn("notifications", v11)
        self.assertEqual(set(v11) - set(v10), {"invite"})

    def test_redaction_event(self) -> None:
        v10 = prune_event_dict(_message(type="m.room.redaction", redacts="$x", content={"reason": "r"}), V10)
        self.assertNotIn("redacts", v10)
        self.assertEqual(v10["content"], {})
        redaction = _message(type="m.room.redaction", content={"redacts": "$x", "reason": "r"})
        v11 = prune_event_dict(redaction, V11)
        self.assertEqual(v11["content"], {"redacts": "$x"})

    def test_member(self) -> None:
        content = {"membership": "join", "displayname": "A", "join_authorised_via_users_server": "@b:x",
                   "third_party_invite": {"display_name": "d", "signed": {"mxid": "@a:x", "token": "t"}}}
        pdu = _message(type="m.room.member", state_key="@a:example.org", content=content)
        self.assertEqual(prune_event_dict(pdu, V10)["content"],
                         {"membership": "join", "join_authorised_via_users_server": "@b:x"})
        self.assertEqual(prune_event_dict(pdu, V11)["content"],
                         {"membership": "join", "join_authorised_via_users_server": "@b:x",
                          "third_party_invite": {"signed": {"mxid": "@a:x", "token": "t"}}})
        no_signed = _message(type="m.room.member", content={"membership": "invite", "third_party_invite": {}})
        self.assertEqual(prune_event_dict(no_signed, V11)["content"], {"membership": "invite"})

    def test_join_rules_and_history_visibility(self) -> None:
        jr = _message(type="m.room.join_rules", content={"join_rule": "restricted", "allow": [], "x": 1})
        hv = _message(type="m.room.history_visibility", content={"history_visibility": "shared", "x": 1})
        aliases = _message(type="m.room.aliases", content={"aliases": ["#a:x"]})
        for version in (V10, V11, V12):
            self.assertEqual(prune_event_dict(jr, version)["content"],
                             {"join_rule": "restricted", "allow": []})
            self.assertEqual(prune_event_dict(hv, version)["content"], {"history_visibility": "shared"})
            self.assertEqual(prune_event_dict(aliases, version)["content"], {})

    def test_input_untouched_and_copied(self) -> None:
        pdu = _message(type="m.room.create", content={"nested": {"a": 1}})
        before = copy.deepcopy(pdu)
        out = prune_event_dict(pdu, V11)
        out["content"]["nested"]["a"] = 2
        self.assertEqual(pdu, before)

    def test_malformed(self) -> None:
        self.assertEqual(prune_event_dict({"type": "m.room.message"}, V11), {"type": "m.room.message",
                                                                            "content": {}})
        with self.assertRaises(ValueError):
            prune_event_dict(_message(content=["x"]), V11)
        with self.assertRaises(ValueError):
            prune_event_dict(_message(type=["m.room.create"]) | {"content": "x"}, V11)
        self.assertEqual(prune_event_dict(_message(type=["m.room.create"]), V11)["content"], {})

    def test_redacted_event_for_client(self) -> None:
        event = {"event_id": "$e", "room_id": "!r:x", "type": "m.room.member", "sender": "@a:x",
                 "state_key": "@a:x", "origin_server_ts": 5,
                 "content": {"membership": "join", "displayname": "secret"},
                 "unsigned": {"age": 10, "prev_content": {"displayname": "old secret"},
                              "transaction_id": "t"}}
        because = {"event_id": "$r", "type": "m.room.redaction", "content": {"redacts": "$e"}}
        out = redacted_event_for_client(event, "11", because)
        self.assertEqual(out["content"], {"membership": "join"})
        self.assertEqual(out["unsigned"], {"age": 10, "transaction_id": "t", "redacted_because": because})
        self.assertEqual(out["event_id"], "$e")
        self.assertEqual(out["state_key"], "@a:x")
        leaky = {**event, "unsigned": {"prev_content": {}}}
        self.assertNotIn("unsigned", redacted_event_for_client(leaky, V10))
        kept = redacted_event_for_client({**event, "unsigned": {"redacted_because": because}}, V10)
        self.assertEqual(kept["unsigned"], {"redacted_because": because})


class SigningTest(unittest.TestCase):
    def setUp(self) -> None:
        self.key = generate_signing_key("k1")
        self.verify = get_verify_key(self.key)

    def test_sign_and_verify_all_versions(self) -> None:
        for version in (V10, V11, V12):
            pdu = _message(unsigned={"age": 1})
            signed = sign_event(pdu, "example.org", self.key, version)
            self.assertNotIn("hashes", pdu)  # input untouched
            self.assertEqual(signed["unsigned"], {"age": 1})
            self.assertIn("ed25519:k1", signed["signatures"]["example.org"])
            verify_event_signature(signed, "example.org", self.verify, version)
            self.assertTrue(check_content_hash(signed))
            # A redacted copy still verifies (the signature covers the redacted form).
            verify_event_signature(prune_event_dict(signed, version), "example.org", self.verify, version)

    def test_existing_signatures_kept(self) -> None:
        signed = sign_event(_message(signatures={"other.org": {"ed25519:x": "abc"}}), "example.org",
                            self.key, V11)
        self.assertEqual(signed["signatures"]["other.org"], {"ed25519:x": "abc"})

    def test_tampering(self) -> None:
        signed = sign_event(_message(), "example.org", self.key, V11)
        # Content is outside the redacted form: the signature holds, the hash catches it.
        changed = copy.deepcopy(signed)
        changed["content"]["body"] = "evil"
        verify_event_signature(changed, "example.org", self.verify, V11)
        self.assertFalse(check_content_hash(changed))
        # Essential fields are signed.
        for key, value in (("origin_server_ts", 1), ("sender", "@evil:example.org"),
                           ("prev_events", []), ("hashes", {"sha256": "x"})):
            with self.assertRaises(SignatureError, msg=key):
                verify_event_signature({**signed, key: value}, "example.org", self.verify, V11)
        with self.assertRaises(SignatureError):
            verify_event_signature(signed, "example.org", get_verify_key(generate_signing_key("k1")), V11)
        with self.assertRaises(SignatureError):
            verify_event_signature(signed, "other.org", self.verify, V11)
        sig = signed["signatures"]["example.org"]["ed25519:k1"]
        for bad in (sig[:-2], "!!" + sig[2:], "A" * 86):
            broken = {**signed, "signatures": {"example.org": {"ed25519:k1": bad}}}
            with self.assertRaises(SignatureError):
                verify_event_signature(broken, "example.org", self.verify, V11)
        with self.assertRaises(SignatureError):
            verify_event_signature({**signed, "content": "x"}, "example.org", self.verify, V11)

    def test_origin_signed_in_v10_only(self) -> None:
        v10 = sign_event(_message(), "example.org", self.key, V10)
        with self.assertRaises(SignatureError):
            verify_event_signature({**v10, "origin": "evil.org"}, "example.org", self.verify, V10)
        v11 = sign_event(_message(), "example.org", self.key, V11)
        verify_event_signature({**v11, "origin": "evil.org"}, "example.org", self.verify, V11)

    def test_check_content_hash_malformed(self) -> None:
        signed = sign_event(_message(), "example.org", self.key, V11)
        self.assertFalse(check_content_hash(_message()))
        self.assertFalse(check_content_hash({**signed, "hashes": {"sha256": 5}}))
        self.assertFalse(check_content_hash({**signed, "hashes": {"sha256": "!!"}}))
        self.assertFalse(check_content_hash({**signed, "hashes": []}))
        self.assertFalse(check_content_hash({**signed, "content": {"f": 1.5}}))

    def test_sign_json(self) -> None:
        obj = {"a": 1, "unsigned": {"u": 1}, "signatures": {"x": {"ed25519:1": "s"}}}
        signed = sign_json(obj, "example.org", self.key)
        self.assertEqual(obj["signatures"], {"x": {"ed25519:1": "s"}})  # input untouched
        self.assertEqual(signed["unsigned"], {"u": 1})
        verify_signed_json({**signed, "unsigned": {"u": 2}}, "example.org", self.verify)
        with self.assertRaises(SignatureError):
            verify_signed_json({**signed, "a": 2}, "example.org", self.verify)
        with self.assertRaises(ValueError):
            sign_json({"a": 0.5}, "example.org", self.key)


class KeyFileTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(self._cleanup)

    def _cleanup(self) -> None:
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def test_round_trip_and_mode(self) -> None:
        path = os.path.join(self.dir, "signing.key")
        key = generate_signing_key()
        self.assertRegex(key.version, r"^a_[A-Za-z0-9]{4}$")
        write_signing_key_file(path, key)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, encoding="ascii") as fh:
            text = fh.read()
        self.assertEqual(text, f"ed25519 {key.version} {encode_base64(key.encode())}\n")
        loaded = read_signing_key_file(path)
        self.assertEqual(loaded.encode(), key.encode())
        self.assertEqual(key_id(loaded), key_id(key))
        self.assertEqual(os.listdir(self.dir), ["signing.key"])  # no temporary file left

    def test_loose_mode_warns(self) -> None:
        path = os.path.join(self.dir, "signing.key")
        write_signing_key_file(path, generate_signing_key("k"))
        os.chmod(path, 0o644)
        with self.assertLogs("homeserver.events.signing", "WARNING") as logs:
            read_signing_key_file(path)
        self.assertIn("644", logs.output[0])

    def test_synapse_format_with_comments(self) -> None:
        path = os.path.join(self.dir, "k")
        seed = encode_base64(bytes(range(32)))
        with open(path, "w", encoding="ascii") as fh:
            fh.write(f"# comment\n\ned25519 a_AbCd {seed}\ned25519 b {seed}\n")
        key = read_signing_key_file(path)
        self.assertEqual((key.alg, key.version, key.encode()), ("ed25519", "a_AbCd", bytes(range(32))))

    def test_load_or_generate(self) -> None:
        path = os.path.join(self.dir, "signing.key")
        first = load_or_generate_signing_key(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = load_or_generate_signing_key(path)
        self.assertEqual(first.encode(), again.encode())
        self.assertEqual(first.version, again.version)

    def test_malformed_files(self) -> None:
        path = os.path.join(self.dir, "bad")
        seed = encode_base64(b"\x07" * 32)
        for body in ("", "# only a comment\n", "ed25519 a_x\n", f"rsa a_x {seed}\n",
                     f"ed25519 a-x {seed}\n", f"ed25519 a_x {seed[:-4]}\n", f"ed25519 a_x !!{seed}\n",
                     f"{seed} ed25519 a_x\n", f"ed25519 {seed} a_x\n", "ed25519 a_x \xe9\n"):
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(body)
            with self.assertRaises(ValueError, msg=body) as ctx:
                read_signing_key_file(path)
            self.assertNotIn(seed, str(ctx.exception))  # never echo the private seed

    def test_bad_versions(self) -> None:
        for version in ("", "a:b", "a b", "ä"):
            with self.assertRaises(ValueError):
                generate_signing_key(version)
        with self.assertRaises(ValueError):
            signing_key_from_seed(b"short", "a")
