"""The audit chain's pure parts: canonical hashing, sanitising, verification of a
forged, truncated, reordered or re-checkpointed chain."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.trial import unittest

from homeserver.audit.chain import (
    GENESIS_HASH,
    PURGE_ACTION,
    REDACTED_KEY,
    ChainVerifier,
    Link,
    canonical_entry,
    entry_hash,
    is_secret_key,
    sanitize_details,
)
from homeserver.audit.config import AUDIT_SCHEMA, AuditConfig, parse_audit
from homeserver.handlers.security_events import seal_event
from storage.stores.security_events import SecurityEvent


def make_chain(n: int, start: Link | None = None) -> list[SecurityEvent]:
    prev = start or Link(0, GENESIS_HASH)
    out = []
    for i in range(n):
        ev = SecurityEvent(ts=1000 + i, event_type="login", outcome="success",
                           user_id=f"@u{i}:test", ip="10.0.0.1", user_agent="ua",
                           details={"n": i}, action="login", id=100 + i)
        sealed = seal_event(ev, prev.seq + 1, prev.hash)
        out.append(sealed)
        prev = Link(sealed.seq, sealed.entry_hash)  # type: ignore[arg-type]
    return out


def verify(entries: list[SecurityEvent], checkpoint: Link | None = None,
           head: Link | None = None, anchor: Link | None = None) -> Any:
    v = ChainVerifier(checkpoint, anchor)
    for e in entries:
        if not v.feed(e.fields()):
            break
    if head is None and entries:
        head = Link(entries[-1].seq, entries[-1].entry_hash)  # type: ignore[arg-type]
    return v.finish(head)


def head_of(entries: list[SecurityEvent]) -> Link:
    return Link(entries[-1].seq, entries[-1].entry_hash)  # type: ignore[arg-type]


class HashTest(unittest.TestCase):
    def test_hash_is_sha256_of_canonical_json_including_prev_hash(self) -> None:
        ev = make_chain(1)[0]
        raw = canonical_entry(ev.fields())
        doc = json.loads(raw)
        self.assertEqual(doc["prev_hash"], GENESIS_HASH)
        self.assertEqual(doc["seq"], 1)
        self.assertNotIn("id", doc)  # the row id is storage detail
        # Canonical: sorted keys, no spaces.
        self.assertEqual(raw, json.dumps(doc, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode())
        import hashlib
        self.assertEqual(ev.entry_hash, hashlib.sha256(raw).hexdigest())

    def test_every_field_is_covered(self) -> None:
        ev = make_chain(1)[0]
        for name, value in (("ts", 1), ("outcome", "failure"), ("user_id", "@x:y"),
                            ("ip", "1.2.3.4"), ("user_agent", "x"), ("target", "t"),
                            ("reason", "r"), ("request_id", "q"), ("details", {"n": 99}),
                            ("prev_hash", "1" * 64), ("seq", 2), ("action", "x")):
            changed = dataclasses.replace(ev, **{name: value})
            self.assertNotEqual(entry_hash(changed.fields()), ev.entry_hash, name)
        # ... but not the row id.
        self.assertEqual(entry_hash(dataclasses.replace(ev, id=5).fields()), ev.entry_hash)


class SanitizeTest(unittest.TestCase):
    def test_secrets_and_content_are_dropped(self) -> None:
        details = {
            "password": "hunter2", "new_password": "x", "access_token": "abc",
            "refreshToken": "r", "auth": {"type": "m.login.password", "password": "p"},
            "body": "hello", "content": {"body": "secret text"}, "mac": "ff",
            "signing_key": "k", "device_keys": {}, "recovery_codes": ["1"], "otp": "123456",
            "room_id": "!r:test", "via": "shared_secret", "nested": {"token": "t", "ok": 1},
            "list": [{"password": "p", "n": 2}],
        }
        out = sanitize_details(details)
        assert out is not None
        text = json.dumps(out)
        for secret in ("hunter2", "abc", "secret text", "hello", "123456", "\"p\""):
            self.assertNotIn(secret, text)
        self.assertEqual(out["room_id"], "!r:test")
        self.assertEqual(out["via"], "shared_secret")
        self.assertEqual(out["nested"], {"ok": 1})
        self.assertEqual(out["list"], [{"n": 2}])
        self.assertIn("password", out[REDACTED_KEY])
        self.assertIn("access_token", out[REDACTED_KEY])

    def test_token_looking_values_are_replaced(self) -> None:
        jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJAYTpiIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
        out = sanitize_details({"note": jwt, "other": "syt_YWxpY2U_abcdefghijklmnop",
                                "sha": "a" * 64, "opaque": "Ab3_" * 12})
        assert out is not None
        self.assertEqual(out["note"], "[redacted]")
        self.assertEqual(out["other"], "[redacted]")
        self.assertEqual(out["opaque"], "[redacted]")
        self.assertEqual(out["sha"], "a" * 64)  # hex digests (chain hashes) are kept

    def test_shapes_canonical_json_accepts(self) -> None:
        out = sanitize_details({"f": 1.5, "i": 2.0, "big": 2**60, "nul": "a\x00b",
                                "surrogate": "\ud800x", "set": {1}, "obj": object()})
        assert out is not None
        self.assertEqual(out["f"], "1.5")
        self.assertEqual(out["i"], 2)
        self.assertEqual(out["big"], str(2**60))
        self.assertEqual(out["nul"], "ab")
        entry_hash({"details": out})  # does not raise

    def test_secret_key_words(self) -> None:
        for key in ("password", "newPassword", "x-auth-token", "session_key", "totp_code"):
            self.assertTrue(is_secret_key(key), key)
        for key in ("room_id", "media_id", "session_id", "through_hash", "uses_allowed",
                    "delete_local_events", "route"):
            self.assertFalse(is_secret_key(key), key)

    def test_nothing_left_is_none(self) -> None:
        self.assertIsNone(sanitize_details(None))
        self.assertEqual(sanitize_details({"password": "x"}), {REDACTED_KEY: ["password"]})


class VerifyTest(unittest.TestCase):
    def test_intact_chain_verifies(self) -> None:
        chain = make_chain(5)
        self.assertIsNone(verify(chain))

    def test_edited_entry_is_named(self) -> None:
        chain = make_chain(5)
        chain[2] = dataclasses.replace(chain[2], outcome="failure")
        problem = verify(chain, head=head_of(make_chain(5)))
        self.assertEqual((problem.kind, problem.seq, problem.row_id), ("edited", 3, 102))

    def test_edited_and_rehashed_entry_breaks_the_next_link(self) -> None:
        chain = make_chain(5)
        forged = dataclasses.replace(chain[2], user_id="@someone-else:test")
        chain[2] = seal_event(forged, 3, chain[1].entry_hash)  # type: ignore[arg-type]
        problem = verify(chain, head=head_of(make_chain(5)))
        self.assertEqual((problem.kind, problem.seq), ("broken_link", 4))
        self.assertIn("seq=3", problem.message)

    def test_deleted_entry_is_named(self) -> None:
        chain = make_chain(5)
        del chain[1]
        problem = verify(chain)
        self.assertEqual((problem.kind, problem.seq), ("missing", 3))
        self.assertIn("seq=2", problem.message)

    def test_deleted_first_entry(self) -> None:
        problem = verify(make_chain(3)[1:])
        self.assertEqual((problem.kind, problem.seq), ("missing", 2))

    def test_truncated_tail_is_caught_by_the_head(self) -> None:
        chain = make_chain(5)
        problem = verify(chain[:3], head=head_of(chain))
        self.assertEqual((problem.kind, problem.seq), ("missing", 4))

    def test_reordered_entries(self) -> None:
        chain = make_chain(5)
        # Swapping two entries' sequence numbers (rows keep their own hashes).
        a, b = chain[1], chain[2]
        swapped = [chain[0], dataclasses.replace(b, seq=2), dataclasses.replace(a, seq=3),
                   *chain[3:]]
        problem = verify(swapped, head=head_of(chain))
        self.assertEqual(problem.seq, 2)
        self.assertIn(problem.kind, ("edited", "broken_link"))
        # Swapped and each rehashed at its new place: the first entry not rewritten
        # no longer links (rewriting up to the head is what the notarised anchor is for).
        b2 = seal_event(b, 2, chain[0].entry_hash)  # type: ignore[arg-type]
        a2 = seal_event(a, 3, b2.entry_hash)  # type: ignore[arg-type]
        problem = verify([chain[0], b2, a2, *chain[3:]], head=head_of(chain))
        self.assertEqual((problem.kind, problem.seq), ("broken_link", 4))
        self.assertIn("seq=3", problem.message)

    def test_unchained_row(self) -> None:
        problem = verify([dataclasses.replace(make_chain(1)[0], seq=None, id=7)])
        self.assertEqual((problem.kind, problem.row_id), ("unchained", 7))

    def test_whole_chain_rewritten_is_caught_by_a_notarised_anchor(self) -> None:
        chain = make_chain(4)
        anchor = Link(3, chain[2].entry_hash)  # type: ignore[arg-type]
        self.assertIsNone(verify(chain, anchor=anchor))
        forged = make_chain(4)
        forged = [seal_event(dataclasses.replace(forged[0], outcome="failure"), 1, GENESIS_HASH)]
        prev = forged[0]
        for ev in make_chain(4)[1:]:
            prev = seal_event(ev, ev.seq, prev.entry_hash)  # type: ignore[arg-type]
            forged.append(prev)
        self.assertIsNone(verify(forged))  # self-consistent ...
        problem = verify(forged, anchor=anchor)  # ... but not what was notarised
        self.assertEqual((problem.kind, problem.seq), ("anchor", 3))
        problem = verify(chain[:2], anchor=anchor)
        self.assertEqual(problem.kind, "anchor")


class CheckpointTest(unittest.TestCase):
    def chain_after_purge(self) -> tuple[Link, list[SecurityEvent]]:
        old = make_chain(4)
        cp = head_of(old)
        rest = make_chain(2, cp)
        purge = SecurityEvent(ts=5000, event_type=PURGE_ACTION, outcome="success",
                              action=PURGE_ACTION,
                              details={"through_seq": cp.seq, "through_hash": cp.hash,
                                       "count": 4})
        rest.append(seal_event(purge, 7, rest[-1].entry_hash))  # type: ignore[arg-type]
        return cp, rest

    def test_chain_verifies_from_the_checkpoint(self) -> None:
        cp, rest = self.chain_after_purge()
        self.assertIsNone(verify(rest, checkpoint=cp))

    def test_first_entry_after_the_cut_must_link_to_the_checkpoint(self) -> None:
        cp, rest = self.chain_after_purge()
        problem = verify(rest[1:], checkpoint=cp)
        self.assertEqual((problem.kind, problem.seq), ("missing", 6))
        problem = verify(rest, checkpoint=Link(cp.seq, "1" * 64))
        self.assertEqual((problem.kind, problem.seq), ("broken_link", 5))

    def test_moved_checkpoint_is_detected(self) -> None:
        # Deleting entries after the cut and moving the checkpoint to match them.
        cp, rest = self.chain_after_purge()
        moved = head_of(rest[:1])
        problem = verify(rest[1:], checkpoint=moved)
        self.assertEqual(problem.kind, "checkpoint")

    def test_checkpoint_without_purge_record(self) -> None:
        cp, rest = self.chain_after_purge()
        problem = verify(rest[:-1], checkpoint=cp)
        self.assertEqual(problem.kind, "checkpoint")


class ConfigTest(unittest.TestCase):
    def test_defaults_and_parse(self) -> None:
        self.assertEqual(AuditConfig().retention_days, 90)
        self.assertEqual(parse_audit({"retention_days": 30}).retention_days, 30)
        self.assertEqual(parse_audit(None).retention_days, 90)
        from jsonschema import Draft202012Validator
        v = Draft202012Validator(AUDIT_SCHEMA)
        self.assertTrue(v.is_valid({"retention_days": 7}))
        self.assertFalse(v.is_valid({"retention_days": 0}))
        self.assertFalse(v.is_valid({"retention": 7}))
