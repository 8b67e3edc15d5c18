"""X-Matrix: header parsing (quoted/unquoted params, case, malformed input), request
signing checked against the spec's signing vectors, and forgery cases."""

from __future__ import annotations

import json
from pathlib import Path

import signedjson.sign
from signedjson.key import get_verify_key
from twisted.trial import unittest

from federation.x_matrix import (
    XMatrixAuth,
    XMatrixError,
    is_valid_server_name,
    parse_x_matrix,
    request_json,
    sign_request,
    verify_request,
)
from homeserver.events.hashing import decode_base64
from homeserver.events.signing import (
    SignatureError,
    generate_signing_key,
    sign_json,
    signing_key_from_seed,
)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "data" / "spec_vectors.json")
                     .read_text(encoding="utf-8"))


def spec_key():  # type: ignore[no-untyped-def]
    sk = VECTORS["signing_key"]
    return signing_key_from_seed(decode_base64(sk["seed_base64"]), sk["key_id"].split(":")[1])


class ParseTest(unittest.TestCase):
    def test_quoted_params(self) -> None:
        auth = parse_x_matrix('X-Matrix origin="origin.hs.example.com",'
                              'destination="destination.hs.example.com",'
                              'key="ed25519:key1",sig="ABCDEF"')
        self.assertEqual(auth, XMatrixAuth("origin.hs.example.com", "destination.hs.example.com",
                                           "ed25519:key1", "ABCDEF"))

    def test_unquoted_params_case_and_whitespace(self) -> None:
        auth = parse_x_matrix("x-matrix  ORIGIN=a.example:8448 , Key = ed25519:k_1 ,"
                              "sig=ab/c+d=,destination=[::1]:8448")
        self.assertEqual(auth.origin, "a.example:8448")
        self.assertEqual(auth.key, "ed25519:k_1")
        self.assertEqual(auth.sig, "ab/c+d=")
        self.assertEqual(auth.destination, "[::1]:8448")

    def test_destination_optional(self) -> None:
        auth = parse_x_matrix('X-Matrix origin=a.example,key="ed25519:1",sig="x"')
        self.assertIsNone(auth.destination)

    def test_escaped_quote_in_value_is_unescaped_then_refused(self) -> None:
        # A backslash escape is honoured by the parser; the result is no server name.
        with self.assertRaises(XMatrixError):
            parse_x_matrix('X-Matrix origin="a\\"b",key="ed25519:1",sig="x"')
        auth = parse_x_matrix('X-Matrix origin="a\\.example",key="ed25519:1",sig="x"')
        self.assertEqual(auth.origin, "a.example")

    def test_malformed(self) -> None:
        bad = [
            "",
            "Bearer abc",
            "X-Matrix",
            'X-Matrix origin="a.example",key="ed25519:1"',  # no sig
            'X-Matrix key="ed25519:1",sig="x"',  # no origin
            'X-Matrix origin="a.example",origin="b.example",key="ed25519:1",sig="x"',
            'X-Matrix origin="a.example,key="ed25519:1",sig="x"',  # unterminated
            'X-Matrix origin="a.example" key="ed25519:1",sig="x"',  # missing comma
            'X-Matrix origin=,key="ed25519:1",sig="x"',
            'X-Matrix origin="a example",key="ed25519:1",sig="x"',
            'X-Matrix origin="a.example",key="rsa:1",sig="x"',
            'X-Matrix origin="a.example",key="ed25519:",sig="x"',
            'X-Matrix origin="a.example",key="ed25519:1",sig="not base64!"',
            'X-Matrix origin="a.example:99999",key="ed25519:1",sig="x"',
            'X-Matrix origin="a.example",destination="b example",key="ed25519:1",sig="x"',
            'X-Matrix origin="a.example\x01",key="ed25519:1",sig="x"',
            'X-Matrix =x,origin="a.example",key="ed25519:1",sig="x"',
            "X-Matrix origin=a.example,key=ed25519:1,sig=" + "A" * 5000,
        ]
        for header in bad:
            with self.assertRaises(XMatrixError, msg=header):
                parse_x_matrix(header)

    def test_server_names(self) -> None:
        for ok in ("example.org", "example.org:8448", "1.2.3.4", "[1234:5678::abcd]:443",
                   "localhost"):
            self.assertTrue(is_valid_server_name(ok), ok)
        for bad in ("", "exa mple.org", "example.org:0", "example.org:65536", "a/b",
                    "[::1", "example.org:", "a" * 300):
            self.assertFalse(is_valid_server_name(bad), bad)


class SigningTest(unittest.TestCase):
    def test_spec_vectors_sign_as_the_spec_says(self) -> None:
        """The key and JSON signing X-Matrix relies on reproduce the spec's vectors."""
        key = spec_key()
        server = VECTORS["signing_key"]["server_name"]
        for case in VECTORS["json_signing"]:
            self.assertEqual(sign_json(case["input"], server, key), case["output"])

    def test_signed_header_verifies_with_signedjson(self) -> None:
        """The header's signature is the spec's: an independent verifier accepts the
        request JSON with it."""
        key = spec_key()
        header = sign_request(key, "domain", "dest.example", "put",
                              "/_matrix/federation/v1/send/1?x=%20y", {"a": 1})
        auth = parse_x_matrix(header)
        obj = request_json("PUT", "/_matrix/federation/v1/send/1?x=%20y", "domain",
                           "dest.example", {"a": 1})
        obj["signatures"] = {"domain": {auth.key: auth.sig}}
        signedjson.sign.verify_signed_json(obj, "domain", get_verify_key(key))
        self.assertEqual(auth.key, VECTORS["signing_key"]["key_id"])

    def test_round_trip(self) -> None:
        key = generate_signing_key("k1")
        header = sign_request(key, "a.example", "b.example", "GET", "/path?q=1")
        verify_request(parse_x_matrix(header), get_verify_key(key), "b.example", "GET",
                       "/path?q=1")


class ForgeryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.key = generate_signing_key("k1")
        self.vk = get_verify_key(self.key)
        self.header = sign_request(self.key, "a.example", "b.example", "PUT", "/x/1",
                                   {"pdus": []})
        self.auth = parse_x_matrix(self.header)

    def check_refused(self, auth: XMatrixAuth, method: str = "PUT", uri: str = "/x/1",
                      content: object = None, ours: str = "b.example",
                      vk: object = None) -> None:
        with self.assertRaises(SignatureError):
            verify_request(auth, vk or self.vk, ours, method,  # type: ignore[arg-type]
                           uri, {"pdus": []} if content is None else content)

    def test_genuine_accepted(self) -> None:
        verify_request(self.auth, self.vk, "b.example", "PUT", "/x/1", {"pdus": []})

    def test_other_method_uri_or_body(self) -> None:
        self.check_refused(self.auth, method="POST")
        self.check_refused(self.auth, uri="/x/2")
        self.check_refused(self.auth, uri="/x/1?extra=1")
        self.check_refused(self.auth, content={"pdus": [1]})
        with self.assertRaises(SignatureError):  # body dropped
            verify_request(self.auth, self.vk, "b.example", "PUT", "/x/1", None)

    def test_other_destination(self) -> None:
        self.check_refused(self.auth, ours="c.example")
        # Without a destination parameter, the signature still binds the destination.
        bare = XMatrixAuth(self.auth.origin, None, self.auth.key, self.auth.sig)
        self.check_refused(bare, ours="c.example")
        verify_request(bare, self.vk, "b.example", "PUT", "/x/1", {"pdus": []})

    def test_other_origin(self) -> None:
        self.check_refused(XMatrixAuth("evil.example", "b.example", self.auth.key,
                                       self.auth.sig))

    def test_other_key(self) -> None:
        other = get_verify_key(generate_signing_key("k1"))
        self.check_refused(self.auth, vk=other)
        renamed = get_verify_key(generate_signing_key("k2"))
        self.check_refused(self.auth, vk=renamed)  # key id mismatch

    def test_tampered_signature(self) -> None:
        sig = self.auth.sig
        flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
        self.check_refused(XMatrixAuth("a.example", "b.example", self.auth.key, flipped))
        self.check_refused(XMatrixAuth("a.example", "b.example", self.auth.key, sig[:-4]))
