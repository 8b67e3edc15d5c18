"""Audit chain version 2: identifiers hashed as MACs under the audit key, so erasure can
replace them with pseudonyms without breaking verification, while any other edit (of a
pseudonym, of a raw identifier, of a MAC, of any other field) is still found. Version 1
entries keep verifying beside version 2 ones."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from twisted.trial import unittest

from homeserver.audit.chain import (
    GENESIS_HASH,
    ChainVerifier,
    Link,
    canonical_entry,
    compute_id_macs,
    identifier_mac,
    pseudonym,
)
from homeserver.audit.id_key import load_or_generate_audit_key, read_audit_key
from homeserver.audit.service import pseudonymised_values, user_pseudonym
from homeserver.handlers.security_events import seal_event
from storage.stores.security_events import SecurityEvent

KEY = b"k" * 32
ERASED = "@eve:test.local"
OTHER = "@bob:test.local"


def entry(i: int, keyed: bool = True, **fields: object) -> SecurityEvent:
    base = {"ts": 1000 + i, "event_type": "login", "outcome": "success", "user_id": ERASED,
            "device_id": "EVEDEV", "session_id": "sess1", "ip": "10.0.0.7",
            "user_agent": "EveClient/1.0", "action": "login", **fields}
    ev = SecurityEvent(**base)  # type: ignore[arg-type]
    return dataclasses.replace(ev, id_macs=compute_id_macs(KEY, ev.fields())) if keyed else ev


def chain(events: list[SecurityEvent]) -> list[SecurityEvent]:
    out, prev = [], Link(0, GENESIS_HASH)
    for i, ev in enumerate(events):
        sealed = seal_event(dataclasses.replace(ev, id=i + 1), prev.seq + 1, prev.hash)
        out.append(sealed)
        prev = Link(sealed.seq or 0, sealed.entry_hash or "")
    return out


def verify(entries: list[SecurityEvent], key: bytes | None = KEY) -> str | None:
    v = ChainVerifier(None, None, key)
    for ev in entries:
        if not v.feed(ev.fields()):
            break
    head = Link(entries[-1].seq or 0, entries[-1].entry_hash or "")
    problem = v.finish(head)
    return problem.message if problem else None


def pseudonymise(entries: list[SecurityEvent], user_id: str = ERASED) -> list[SecurityEvent]:
    return [dataclasses.replace(ev, **pseudonymised_values(ev, user_id)) for ev in entries]


class ChainV2Test(unittest.TestCase):
    def sample(self) -> list[SecurityEvent]:
        return chain([
            entry(0),  # the erased user's own login
            entry(1, keyed=False, user_id=OTHER),  # a version 1 entry of someone else
            entry(2, event_type="admin_action", action="deactivate_user", user_id=OTHER,
                  device_id="BOBDEV", target=ERASED,
                  details={"action": "deactivate_user", "user_id": ERASED, "erase": True,
                           "device_ids": ["EVEDEV", "OTHERDEV"]}),
            entry(3, user_id=OTHER, device_id="BOBDEV", ip="10.0.0.8"),
        ])

    def test_hash_covers_macs_not_raw_identifiers(self) -> None:
        ev = self.sample()[0]
        raw = canonical_entry(ev.fields()).decode()
        self.assertIn('"v":2', raw)
        for value in (ERASED, "EVEDEV", "10.0.0.7", "EveClient/1.0"):
            self.assertNotIn(value, raw)
        self.assertIn(identifier_mac(KEY, ERASED), raw)

    def test_intact_chain_verifies_with_and_without_the_key(self) -> None:
        entries = self.sample()
        self.assertIsNone(verify(entries))
        self.assertIsNone(verify(entries, key=None))

    def test_pseudonymised_chain_still_verifies(self) -> None:
        entries = pseudonymise(self.sample())
        self.assertIsNone(verify(entries))
        self.assertIsNone(verify(entries, key=None))
        name = user_pseudonym(KEY, ERASED)
        own, v1, admin, bob = entries
        # Every identifier of the user's own entry; only the user's id in the admin's.
        self.assertEqual(own.user_id, name)
        for v in (own.device_id, own.session_id, own.ip, own.user_agent):
            self.assertTrue(v and v.startswith("erased-"), v)
        self.assertEqual((admin.user_id, admin.device_id, admin.target),
                         (OTHER, "BOBDEV", name))
        assert admin.details is not None
        self.assertEqual(admin.details["user_id"], name)
        self.assertEqual(admin.details["device_ids"], ["EVEDEV", "OTHERDEV"])
        self.assertEqual(admin.details["erase"], True)
        self.assertEqual((v1, bob), (self.sample()[1], self.sample()[3]))
        text = repr([e.fields() for e in entries if e.id_macs is not None])
        self.assertNotIn(ERASED, text)
        # Idempotent: nothing more to replace.
        self.assertEqual([pseudonymised_values(e, ERASED) for e in entries], [{}] * 4)

    def test_edits_of_a_pseudonymised_entry_are_found(self) -> None:
        entries = pseudonymise(self.sample())
        edits = {
            "pseudonym swapped": {"user_id": user_pseudonym(KEY, OTHER)},
            "pseudonym replaced by another id": {"target": OTHER},
            "identifier removed": {"device_id": None},
            "outcome": {"outcome": "failure"},
            "mac": {"id_macs": {**(entries[0].id_macs or {}), "ip": "0" * 64}},
        }
        for name, change in edits.items():
            forged = list(entries)
            forged[0] = dataclasses.replace(entries[0], **change)  # type: ignore[arg-type]
            if "target" in change:
                forged[2] = dataclasses.replace(entries[2], **change)  # type: ignore[arg-type]
                forged[0] = entries[0]
            self.assertIsNotNone(verify(forged), name)
        # A details identifier turned into another type is found too.
        forged = list(entries)
        forged[2] = dataclasses.replace(entries[2], details={**(entries[2].details or {}),
                                                             "user_id": 5})
        self.assertIsNotNone(verify(forged))

    def test_raw_identifier_edit_is_found_with_the_key(self) -> None:
        entries = self.sample()
        forged = list(entries)
        forged[3] = dataclasses.replace(entries[3], ip="10.9.9.9")
        self.assertIn("ip does not match its MAC", verify(forged) or "")
        # Without the key only the hashes can be checked: the MACs still match the hash.
        self.assertIsNone(verify(forged, key=None))

    def test_version_1_entries_keep_their_raw_values(self) -> None:
        v1 = chain([entry(0, keyed=False)])
        self.assertEqual(pseudonymised_values(v1[0], ERASED), {})
        self.assertIsNone(verify(v1))
        self.assertIn(ERASED, canonical_entry(v1[0].fields()).decode())

    def test_pseudonym_is_derived_from_the_mac(self) -> None:
        mac = identifier_mac(KEY, ERASED)
        self.assertEqual(pseudonym(mac), "erased-" + mac[:16])
        self.assertNotEqual(identifier_mac(b"x" * 32, ERASED), mac)


class AuditKeyFileTest(unittest.TestCase):
    def test_generated_once_private_and_reread(self) -> None:
        d = tempfile.mkdtemp()
        self.assertIsNone(read_audit_key(d))
        key = load_or_generate_audit_key(d)
        self.assertEqual(len(key), 32)
        self.assertEqual(load_or_generate_audit_key(d), key)
        mode = os.stat(os.path.join(d, "audit_id.key")).st_mode & 0o777
        self.assertEqual(mode, 0o600)

    def test_corrupt_key_file_is_an_error(self) -> None:
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "audit_id.key"), "w") as f:
            f.write("not hex")
        self.assertRaises(ValueError, read_audit_key, d)
