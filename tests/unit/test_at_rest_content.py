"""The cores of optional content encryption and keyed lookup hashes: FieldCodec
(seal when enabled, open whatever the setting, plaintext passthrough and refusal, the
rotation target form) and Keyring/SecretVault lookup hashes (keyed per KEK, stable,
every configured key's hash for lookups)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from homeserver.crypto.at_rest import AtRestError, Keyring, SecretVault, envelope_kid
from homeserver.crypto.content import (
    FieldCodec,
    event_location,
    profile_field_location,
    sql_sealed,
)

K1, K2 = os.urandom(32), os.urandom(32)


def vault(active: str = "k1", accept_plaintext: bool = True) -> SecretVault:
    return SecretVault(Keyring({"k1": K1, "k2": K2}, active), accept_plaintext)


class FieldCodecTest(unittest.TestCase):
    def test_enabled_seals_and_opens_bound_to_the_row(self) -> None:
        codec = FieldCodec(vault(), True)
        stored = codec.seal('{"body":"x"}', event_location("$a"))
        self.assertEqual(envelope_kid(stored), "k1")
        self.assertEqual(codec.open(stored, event_location("$a")), '{"body":"x"}')
        with self.assertRaises(AtRestError) as e:
            codec.open(stored, event_location("$b"))
        self.assertEqual(e.exception.problem, "tampered")

    def test_disabled_writes_plaintext_but_still_opens_sealed_values(self) -> None:
        on, off = FieldCodec(vault(), True), FieldCodec(vault(), False)
        loc = profile_field_location("@u:hs", "m.tz")
        self.assertEqual(off.seal('"UTC"', loc), '"UTC"')
        self.assertEqual(off.open(on.seal('"UTC"', loc), loc), '"UTC"')

    def test_plaintext_passthrough_and_refusal(self) -> None:
        loc = event_location("$a")
        self.assertEqual(FieldCodec(vault(), True).open("{}", loc), "{}")
        strict = FieldCodec(vault(accept_plaintext=False), True)
        with self.assertRaises(AtRestError) as e:
            strict.open("{}", loc)
        self.assertEqual(e.exception.problem, "plaintext_refused")
        # Off, plaintext is the normal form whatever accept_plaintext says.
        self.assertEqual(FieldCodec(vault(accept_plaintext=False), False).open("{}", loc), "{}")

    def test_field_locations_cannot_collide(self) -> None:
        a = profile_field_location("@u:hs", "x\"y")
        b = profile_field_location("@u:hs\"", "y")
        self.assertNotEqual(a.row, b.row)

    def test_needs_rewrite_and_rewrite(self) -> None:
        loc = event_location("$a")
        old = FieldCodec(vault("k1"), True).seal("{}", loc)
        new = FieldCodec(vault("k2"), True)
        self.assertTrue(new.needs_rewrite(old))
        self.assertTrue(new.needs_rewrite("{}"))
        rewritten = new.rewrite(old, loc)
        self.assertEqual(envelope_kid(rewritten), "k2")
        self.assertFalse(new.needs_rewrite(rewritten))
        off = FieldCodec(vault("k2"), False)
        self.assertTrue(off.needs_rewrite(rewritten))
        self.assertEqual(off.rewrite(rewritten, loc), "{}")
        self.assertFalse(off.needs_rewrite("{}"))
        self.assertFalse(new.needs_rewrite(None))

    def test_enabled_without_a_key_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            FieldCodec(SecretVault(None), True)

    def test_sql_sealed_has_no_placeholder_characters(self) -> None:
        expr = sql_sealed("p.displayname")
        self.assertNotIn("%", expr)
        self.assertNotIn("?", expr)


class LookupHashTest(unittest.TestCase):
    def test_keyed_stable_and_per_key(self) -> None:
        v1 = vault("k1")
        h = v1.lookup_hash("token", "pushers.pushkey")
        self.assertTrue(h.startswith("k1:"))
        self.assertNotIn("token", h)
        self.assertEqual(h, vault("k1").lookup_hash("token", "pushers.pushkey"))
        self.assertNotEqual(h, v1.lookup_hash("token2", "pushers.pushkey"))
        self.assertNotEqual(h, v1.lookup_hash("token", "other.purpose"))
        # Another KEK with the same id gives another hash: it is keyed.
        other = SecretVault(Keyring({"k1": os.urandom(32)}, "k1"))
        self.assertNotEqual(h, other.lookup_hash("token", "pushers.pushkey"))

    def test_lookup_candidates_cover_every_key_and_unkeyed(self) -> None:
        v2 = vault("k2")
        hashes = v2.lookup_hashes("token", "p")
        self.assertEqual(hashes[0], v2.lookup_hash("token", "p"))
        self.assertIn(vault("k1").lookup_hash("token", "p"), hashes)
        self.assertIn(SecretVault(None).lookup_hash("token", "p"), hashes)
        self.assertEqual(len(hashes), 3)
        self.assertEqual(SecretVault(None).lookup_hashes("token", "p"),
                         [SecretVault(None).lookup_hash("token", "p")])
