"""Stored event JSON is read with orjson (storage/stores/event_rows.py ``load_event_json``):
the same values the standard library reads, for what Parley stores, and the standard
library still reads what orjson refuses."""

from __future__ import annotations

import json

from twisted.trial import unittest

from homeserver.events.canonical_json import encode_canonical_json
from storage.stores.event_rows import load_event_json


class LoadEventJsonTest(unittest.TestCase):
    def same(self, raw: str) -> None:
        got, want = load_event_json(raw), json.loads(raw)
        self.assertEqual(repr(got), repr(want), raw)

    def test_events_as_stored(self) -> None:
        for pdu in ({"type": "m.room.message", "content": {"body": "é ✓ 😀", "n": 2**53 - 1,
                                                           "m": -(2**53) + 1},
                     "depth": 12, "origin_server_ts": 1_765_000_000_000,
                     "prev_events": ["$a", "$b"], "unsigned": {"transaction_id": "t1"},
                     "hashes": {"sha256": "abc"}, "signatures": {"hs": {"ed25519:a": "x"}}},
                    {"type": "m.room.member", "state_key": "@u:hs", "content": {}}):
            self.same(json.dumps(pdu))
            self.same(json.dumps(pdu, ensure_ascii=False))

    def test_what_orjson_refuses(self) -> None:
        self.same('{"n": NaN, "m": Infinity}')
        self.same('{"s": "\\ud800 alone"}')

    def test_canonical_json_keeps_out_what_orjson_would_misread(self) -> None:
        # orjson reads an integer past 64 bits as a float: such an integer never gets
        # into a stored event, whose content hash is of its strict canonical JSON.
        for bad in (2**53, 2**70, 1.5):
            with self.assertRaises(ValueError):
                encode_canonical_json({"content": {"n": bad}})
