"""federation/pdu_checks.py parse_pdu speed-ups (issue 16 "Speed"): the PDU's size is
derived from one encoding of its hashed body (it must equal the whole PDU's canonical
size, so the 65536-byte limit is unchanged), the content hash is reused by
check_content_hash, and ``copy_values=False`` still drops ``unsigned`` and leaves the
caller's dict alone. Pure code: the same on both engines."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from federation import pdu_checks
from federation.pdu_checks import MAX_PDU_BYTES, PduError, check_content_hash, parse_pdu
from homeserver.events.hashing import encode_base64
from homeserver.events.room_versions import get_room_version


def _version(ident: str) -> Any:
    found = get_room_version(ident)
    assert found is not None
    return found


def _pdu(body: str = "hi", **extra: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.message", "sender": "@a:x.test", "room_id": "!r:x.test",
        "content": {"body": body, "n": [1, {"é": "ü"}]}, "depth": 3,
        "origin_server_ts": 5, "prev_events": ["$p"], "auth_events": ["$a"],
        "signatures": {"x.test": {"ed25519:k": "sig"}}, **extra}
    pdu["hashes"] = {"sha256": encode_base64(pdu_checks.content_hash(pdu, _version("10")))}
    return pdu


class EncodedSizeTest(unittest.TestCase):
    def test_size_equals_the_whole_canonical_encoding(self) -> None:
        for ident in ("1", "5", "10"):
            v = _version(ident)
            encode = pdu_checks.encoder_for(v)
            cases = [_pdu(), _pdu(body="x" * 300), {"a": 1}, {},
                     {"hashes": {"sha256": "h"}}, {"signatures": {}},
                     {"hashes": {}, "signatures": {"s": {"k": "v"}}, "z": 1, "a": "b"}]
            for case in cases:
                size, digest = pdu_checks._encoded_size_and_hash(case, v)  # noqa: SLF001
                self.assertEqual(size, len(encode(case)), (ident, case))
                self.assertEqual(digest, pdu_checks.content_hash(case, v))

    def test_limit_is_on_the_whole_pdu(self) -> None:
        v = _version("10")
        pdu = _pdu()
        # The hashed body well under the limit, the signatures taking it over.
        pdu["signatures"] = {"x.test": {f"ed25519:k{i}": "s" * 100 for i in range(700)}}
        self.assertLess(len(pdu_checks.encoder_for(v)(
            {k: x for k, x in pdu.items() if k != "signatures"})), MAX_PDU_BYTES)
        with self.assertRaises(PduError):
            parse_pdu(pdu, v, "!r:x.test")

    def test_non_canonical_signatures_still_refused(self) -> None:
        pdu = _pdu()
        pdu["signatures"] = {"x.test": {"ed25519:k": 1.5}}
        with self.assertRaises(PduError):
            parse_pdu(pdu, _version("10"), "!r:x.test")


class ContentHashReuseTest(unittest.TestCase):
    def test_good_and_bad_hash(self) -> None:
        v = _version("10")
        event = parse_pdu(_pdu(), v, "!r:x.test")
        self.assertIs(check_content_hash(event), event)
        bad = _pdu()
        bad["content"]["body"] = "altered"
        checked = check_content_hash(parse_pdu(bad, v, "!r:x.test"))
        self.assertNotIn("body", checked.pdu["content"])  # redacted

    def test_no_copy_leaves_the_callers_dict(self) -> None:
        v = _version("10")
        raw = _pdu(unsigned={"age": 1})
        event = parse_pdu(raw, v, "!r:x.test", copy_values=False)
        self.assertNotIn("unsigned", event.pdu)
        self.assertIn("unsigned", raw)
        self.assertEqual(event.event_id, parse_pdu(raw, v, "!r:x.test").event_id)
