"""The one opaque pagination-token codec (homeserver/http/opaque_tokens.py) and the
bounded-integer parsers (homeserver/http/params.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.trial import unittest

from homeserver.http.errors import MatrixError
from homeserver.http.opaque_tokens import Bool, Int, Str, decode_token, encode_token
from homeserver.http.params import (
    MAX_POSITION,
    parse_room_token,
    parse_stream_token,
)

SHAPE = (Int(), Str(prefix="!"), Bool(), Int(nullable=True))


def raw_token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


class OpaqueTokenTest(unittest.TestCase):
    def assertBad(self, token: str, shape: Any = SHAPE) -> None:  # noqa: N802
        with self.assertRaises(MatrixError, msg=token) as ctx:
            decode_token(token, 500, shape)
        self.assertEqual((ctx.exception.code, ctx.exception.errcode), (400, "M_INVALID_PARAM"))

    def test_round_trip(self) -> None:
        values = [7, "!room:example.org", True, None]
        token = encode_token(values)
        self.assertNotIn("=", token)
        self.assertEqual(decode_token(token, 500, SHAPE), values)
        self.assertEqual(decode_token(encode_token([MAX_POSITION, "!ü", False, 3]), 500, SHAPE),
                         [MAX_POSITION, "!ü", False, 3])

    def test_garbage_and_wrong_shapes(self) -> None:
        good = encode_token([1, "!r", True, None])
        for token in ("", "%%%", "a", "not base64!", good + "!", "ü" + good, good * 20,
                      raw_token({"a": 1}), raw_token([1, "!r", True]),
                      raw_token([1, "!r", True, None, 5]), raw_token("x"),
                      base64.urlsafe_b64encode(b"\xff\xfe").decode(),
                      base64.urlsafe_b64encode(b"[1,").decode(),
                      base64.urlsafe_b64encode(b"[" * 400 + b"]" * 400).decode()[:499]):
            self.assertBad(token)

    def test_item_checks(self) -> None:
        for values in ([-1, "!r", True, None], [MAX_POSITION + 1, "!r", True, None],
                       [10**30, "!r", True, None], [True, "!r", True, None],
                       [1.0, "!r", True, None], [1, "r", True, None], [1, "!r\x00", True, None],
                       [1, "!\ud800", True, None], [1, "!" + "a" * 300, True, None],
                       [1, "!r", 1, None], [1, "!r", True, "2"], [1, "!r", True, -5],
                       [1, 5, True, None]):
            self.assertBad(raw_token(values))
        self.assertBad(raw_token(["best", 1]), (Str(choices=("rank", "recent")), Int()))
        self.assertEqual(decode_token(encode_token(["rank", 1]), 100,
                                      (Str(choices=("rank", "recent")), Int())), ["rank", 1])
        # Digits past Python's int parsing limit are a 400 too, not a ValueError.
        self.assertBad(base64.urlsafe_b64encode(b"[" + b"9" * 5000 + b"]").decode(), (Int(),))


class PositionTokenTest(unittest.TestCase):
    def test_room_tokens(self) -> None:
        self.assertEqual(parse_room_token("t42", "from"), 42)
        self.assertEqual(parse_room_token("s42_7_1", "from"), 42)
        # Backfilled history lies below position 0 (federation/missing_events.py).
        self.assertEqual(parse_room_token("t-7", "from"), -7)
        for raw in ("t", "t--1", "t-", "t-" + "9" * 19, "t" + "9" * 19, "s" + "9" * 19 + "_0",
                    "t١", "x1", "t1 ", "s1_" + "9" * 19, "s1" + "_1" * 17):
            with self.assertRaises(MatrixError, msg=raw):
                parse_room_token(raw, "from")

    def test_stream_tokens(self) -> None:
        self.assertEqual(parse_stream_token("s1_2", "s", 2, 7), [1, 2])
        self.assertEqual(parse_stream_token(f"s{MAX_POSITION}_0", "s", 2, 7), [MAX_POSITION, 0])
        for raw in ("s1", "1_2", "s1_", "s_1", "s1__2", f"s{MAX_POSITION + 1}_0", "s1_-2",
                    "s1_2_3_4_5_6_7_8", "s" + "9" * 30 + "_0", "s١_0", "s1_2 "):
            with self.assertRaises(MatrixError, msg=raw) as ctx:
                parse_stream_token(raw, "s", 2, 7)
            self.assertEqual(ctx.exception.errcode, "M_INVALID_PARAM")
