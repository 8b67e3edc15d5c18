"""federation/pdu_checks.py: PDU format per room version, content hashes, signatures
(with the spec's signing vectors), lenient canonical JSON of room versions 1-5, and
server ACL matching. Pure code (no database): the same on both engines."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from signedjson.key import decode_verify_key_bytes
from twisted.trial import unittest

from federation import pdu_checks
from federation.pdu_checks import (
    MAX_PDU_BYTES,
    PduError,
    check_content_hash,
    check_signatures,
    parse_pdu,
    server_allowed_by_acl,
)
from homeserver.events.hashing import decode_base64
from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import get_room_version
from homeserver.events.signing import generate_signing_key, sign_event

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "spec_vectors.json").read_text())


def version(ident: str) -> Any:
    found = get_room_version(ident)
    assert found is not None
    return found


class FakeKeyRing:
    """Keys by (server, key id); records the ``ts`` each was asked for at."""

    def __init__(self, keys: dict[tuple[str, str], Any]) -> None:
        self.keys = keys
        self.asked: list[tuple[str, str, int | None]] = []

    async def get_verify_key(self, server: str, kid: str, ts: int | None) -> Any:
        self.asked.append((server, kid, ts))
        return self.keys.get((server, kid))


def spec_keyring() -> FakeKeyRing:
    spec = VECTORS["signing_key"]
    key = decode_verify_key_bytes(spec["key_id"],
                                  decode_base64(spec["derived_public_key_base64"]))
    return FakeKeyRing({(spec["server_name"], spec["key_id"]): key})


def make_pdu(room_version: str = "10", **over: Any) -> tuple[dict[str, Any], Any]:
    key = generate_signing_key("k1")
    pdu: dict[str, Any] = {
        "room_id": "!r:remote.test", "type": "m.room.message", "sender": "@u:remote.test",
        "content": {"body": "hi"}, "origin_server_ts": 5000, "depth": 4,
        "prev_events": [], "auth_events": [], **over,
    }
    if version(room_version).event_format == 1:
        pdu["event_id"] = "$e1:remote.test"
        pdu["prev_events"] = [["$p:remote.test", {"sha256": "x"}]] if over.get("prev") else []
    return sign_event(pdu, "remote.test", key, room_version), key


class SpecVectorTest(unittest.TestCase):
    async def test_v3_vector_parses_and_verifies(self) -> None:
        vec = VECTORS["event_signing"][0]
        event = parse_pdu(vec["output"], version("3"))
        self.assertEqual(event.event_id, "$" + vec["derived"]["reference_hash_sha256"])
        self.assertNotIn("unsigned", event.pdu)
        self.assertIs(check_content_hash(event), event)
        await check_signatures(spec_keyring(), event, "domain")

    async def test_v1_vector_signature_and_hash(self) -> None:
        vec = VECTORS["event_signing"][1]
        event = Event(vec["output"]["event_id"], copy.deepcopy(vec["output"]), version("1"))
        self.assertIs(check_content_hash(event), event)
        await check_signatures(spec_keyring(), event, "domain")

    async def test_tampered_content_is_redacted_not_refused(self) -> None:
        vec = VECTORS["event_signing"][1]
        pdu = copy.deepcopy(vec["output"])
        pdu["content"]["body"] = "something else"
        event = Event(pdu["event_id"], pdu, version("1"))
        redacted = check_content_hash(event)
        self.assertIsNot(redacted, event)
        self.assertEqual(redacted.content, {})
        # The signature covers the redacted form: still good.
        await check_signatures(spec_keyring(), redacted, "domain")

    async def test_bad_signature_refused(self) -> None:
        vec = VECTORS["event_signing"][0]
        pdu = copy.deepcopy(vec["output"])
        pdu["depth"] = 4  # a signed (kept by redaction) field
        event = parse_pdu(pdu, version("3"))
        with self.assertRaises(PduError) as cm:
            await check_signatures(spec_keyring(), event, "domain")
        self.assertIn("bad signature", cm.exception.reason)

    async def test_unsigned_or_unknown_key_refused(self) -> None:
        vec = VECTORS["event_signing"][0]
        pdu = copy.deepcopy(vec["output"])
        pdu["signatures"] = {}
        with self.assertRaises(PduError):
            await check_signatures(spec_keyring(), parse_pdu(pdu, version("3")), None)
        event = parse_pdu(vec["output"], version("3"))
        with self.assertRaises(PduError):
            await check_signatures(FakeKeyRing({}), event, None)


class SignatureRulesTest(unittest.TestCase):
    async def test_key_validity_by_room_version(self) -> None:
        for ident, expect_ts in (("4", None), ("5", 5000), ("10", 5000)):
            pdu, key = make_pdu(ident)
            keyring = FakeKeyRing({("remote.test", "ed25519:k1"): key.verify_key})
            await check_signatures(keyring, parse_pdu(pdu, version(ident)), "remote.test")
            self.assertEqual(keyring.asked, [("remote.test", "ed25519:k1", expect_ts)])

    async def test_origin_signature_checked_when_present(self) -> None:
        pdu, key = make_pdu()
        other = generate_signing_key("o1")
        pdu["signatures"]["origin.test"] = {"ed25519:o1": "A" * 86}
        keyring = FakeKeyRing({("remote.test", "ed25519:k1"): key.verify_key,
                               ("origin.test", "ed25519:o1"): other.verify_key})
        event = parse_pdu(pdu, version("10"))
        with self.assertRaises(PduError):
            await check_signatures(keyring, event, "origin.test")
        # Another server's bogus signature is not looked at unless it is the origin.
        await check_signatures(keyring, event, "remote.test")

    async def test_v1_event_id_domain_must_sign(self) -> None:
        pdu, key = make_pdu("1")
        pdu = {**pdu, "event_id": "$e1:elsewhere.test"}
        keyring = FakeKeyRing({("remote.test", "ed25519:k1"): key.verify_key})
        with self.assertRaises(PduError) as cm:
            await check_signatures(keyring, parse_pdu(pdu, version("1")), "remote.test")
        self.assertIn("elsewhere.test", cm.exception.reason)


class FormatTest(unittest.TestCase):
    def test_event_id_from_reference_hash_and_v12_create(self) -> None:
        pdu, _ = make_pdu("10")
        event = parse_pdu({**pdu, "event_id": "$ignored"}, version("10"))
        self.assertNotIn("event_id", event.pdu)
        self.assertTrue(event.event_id.startswith("$") and ":" not in event.event_id)
        create, _ = make_pdu("12", type="m.room.create", state_key="", content={})
        del create["room_id"]
        parsed = parse_pdu(create, version("12"))
        self.assertEqual(parsed.room_id, "!" + parsed.event_id[1:])
        with self.assertRaises(PduError):
            parse_pdu(create, version("12"), room_id="!other")

    def test_malformed_refused(self) -> None:
        pdu, _ = make_pdu()
        bad: list[dict[str, Any]] = [
            {k: v for k, v in pdu.items() if k != "sender"},
            {**pdu, "sender": "not-a-user"},
            {**pdu, "depth": -1},
            {**pdu, "depth": "3"},
            {**pdu, "content": []},
            {**pdu, "room_id": "r"},
            {**pdu, "type": "x" * 256},
            {**pdu, "state_key": 3},
            {**pdu, "prev_events": [f"$p{i}" for i in range(21)]},
            {**pdu, "auth_events": [f"$a{i}" for i in range(11)]},
            {**pdu, "prev_events": [["$p:x", {}]]},  # v1 format in a v10 room
            {**pdu, "content": {"n": 1.5}},
        ]
        for i, candidate in enumerate(bad):
            with self.assertRaises(PduError, msg=str(i)):
                parse_pdu(candidate, version("10"))
        with self.assertRaises(PduError):
            parse_pdu(pdu, version("10"), room_id="!another:remote.test")
        with self.assertRaises(PduError):
            parse_pdu({**pdu, "event_id": "no-domain"} | {"prev_events": []}, version("1"))

    def test_size_limit(self) -> None:
        pdu, _ = make_pdu(content={"body": "x" * (MAX_PDU_BYTES - 400)})
        parse_pdu(pdu, version("10"))
        big, _ = make_pdu(content={"body": "x" * MAX_PDU_BYTES})
        with self.assertRaises(PduError) as cm:
            parse_pdu(big, version("10"))
        self.assertIn("too large", cm.exception.reason)

    async def test_lenient_integers_in_v1_to_v5_only(self) -> None:
        huge = 2**60
        for ident in ("3", "5"):
            key = generate_signing_key("k1")
            pdu: dict[str, Any] = {
                "room_id": "!r:remote.test", "type": "m.room.message",
                "sender": "@u:remote.test", "content": {"n": huge}, "origin_server_ts": 1,
                "depth": 1, "prev_events": [], "auth_events": []}
            # Signed as a v1-5 server does: canonical JSON without the range check.
            body = dict(pdu)
            body["hashes"] = {"sha256": pdu_checks.encode_base64(
                pdu_checks.content_hash(body, version(ident)))}
            redacted = prune_event_dict(body, ident)
            sig = key.sign(pdu_checks._lenient(redacted)).signature
            body["signatures"] = {"remote.test": {"ed25519:k1": pdu_checks.encode_base64(sig)}}
            event = parse_pdu(body, version(ident))
            self.assertEqual(event.content["n"], huge)
            self.assertIs(check_content_hash(event), event)
            await check_signatures(FakeKeyRing({("remote.test", "ed25519:k1"): key.verify_key}),
                                   event, "remote.test")
            with self.assertRaises(PduError):
                parse_pdu(body, version("6"))


class AclTest(unittest.TestCase):
    def test_matching(self) -> None:
        acl = {"allow": ["*"], "deny": ["evil.test", "*.bad.test"], "allow_ip_literals": False}
        self.assertTrue(server_allowed_by_acl("good.test", acl))
        self.assertTrue(server_allowed_by_acl("good.test:8448", acl))
        self.assertFalse(server_allowed_by_acl("evil.test", acl))
        self.assertFalse(server_allowed_by_acl("EVIL.test:443", acl))
        self.assertFalse(server_allowed_by_acl("a.bad.test", acl))
        self.assertTrue(server_allowed_by_acl("bad.test", acl))
        self.assertFalse(server_allowed_by_acl("1.2.3.4", acl))
        self.assertFalse(server_allowed_by_acl("[::1]:8448", acl))
        self.assertTrue(server_allowed_by_acl("1.2.3.4", {"allow": ["*"]}))
        # Nothing allowed unless listed; '?' matches one character.
        self.assertFalse(server_allowed_by_acl("good.test", {}))
        self.assertTrue(server_allowed_by_acl("s1.test", {"allow": ["s?.test"]}))
        self.assertFalse(server_allowed_by_acl("s10.test", {"allow": ["s?.test"]}))
        # Malformed entries are ignored, never an error.
        self.assertFalse(server_allowed_by_acl("x.test", {"allow": "*", "deny": [3]}))
