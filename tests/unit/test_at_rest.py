"""Envelope encryption at rest (homeserver/crypto/at_rest.py) and its config section:
round trip, associated data binding a value to its row, tampering, unknown key ids,
rotation between two keys, plaintext fallback, and the encrypted signing key file."""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any

from twisted.trial import unittest

from homeserver.config import ConfigError
from homeserver.crypto.at_rest import (
    AtRestError,
    Keyring,
    Location,
    SecretVault,
    decode_kek,
    envelope_kid,
    is_envelope,
    new_kek_text,
)
from homeserver.crypto.config import parse_at_rest
from homeserver.crypto.signing_key_file import (
    is_encrypted_file,
    load_or_generate,
    read_keys,
    reseal_file,
)
from homeserver.events.signing import generate_signing_key, key_id, write_signing_key_file

K1 = os.urandom(32)
K2 = os.urandom(32)
ALICE = Location("mfa_totp", "secret", "@alice:test")
BOB = Location("mfa_totp", "secret", "@bob:test")


def vault(*kids: str, active: str | None = None, **kw: Any) -> SecretVault:
    keys = {"k1": K1, "k2": K2}
    chosen = {k: keys[k] for k in kids}
    return SecretVault(Keyring(chosen, active or kids[0]), **kw)


class EnvelopeTest(unittest.TestCase):
    def test_round_trip(self) -> None:
        v = vault("k1")
        sealed = v.seal("JBSWY3DPEHPK3PXP", ALICE)
        self.assertTrue(is_envelope(sealed))
        self.assertNotIn("JBSWY3DPEHPK3PXP", sealed)
        self.assertEqual(envelope_kid(sealed), "k1")
        self.assertEqual(v.open_sync(sealed, ALICE), "JBSWY3DPEHPK3PXP")
        # A fresh data key and nonces per value: the same secret seals differently.
        self.assertNotEqual(sealed, v.seal("JBSWY3DPEHPK3PXP", ALICE))

    def test_unicode_and_empty(self) -> None:
        v = vault("k1")
        for text in ("", "é€😀", "x" * 10000):
            self.assertEqual(v.open_sync(v.seal(text, ALICE), ALICE), text)

    def test_other_row_is_refused(self) -> None:
        v = vault("k1")
        sealed = v.seal("secret", ALICE)
        with self.assertRaises(AtRestError) as cm:
            v.open_sync(sealed, BOB)
        self.assertEqual(cm.exception.problem, "tampered")

    def test_other_column_or_table_is_refused(self) -> None:
        v = vault("k1")
        sealed = v.seal("secret", ALICE)
        for loc in (Location("mfa_totp", "other", "@alice:test"),
                    Location("pushers", "secret", "@alice:test")):
            with self.assertRaises(AtRestError):
                v.open_sync(sealed, loc)

    def test_tampered_parts_are_refused(self) -> None:
        v = vault("k1")
        sealed = v.seal("secret", ALICE)
        parts = sealed.split(".")
        for i in (2, 3, 4):
            raw = bytearray(base64.urlsafe_b64decode(parts[i] + "=" * (-len(parts[i]) % 4)))
            raw[len(raw) // 2] ^= 1
            bad = parts.copy()
            bad[i] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
            with self.assertRaises(AtRestError) as cm:
                v.open_sync(".".join(bad), ALICE)
            self.assertIn(cm.exception.problem, ("tampered", "malformed"))

    def test_truncated_and_malformed(self) -> None:
        v = vault("k1")
        sealed = v.seal("secret", ALICE)
        for bad in (sealed[:-4], "pv1.k1.x.y", "pv1.k1.!!.!!.!!", "pv1..a.b.c", sealed + ".x"):
            with self.assertRaises(AtRestError):
                v.open_sync(bad, ALICE)

    def test_relabelled_key_id_is_refused(self) -> None:
        both = vault("k1", "k2")
        sealed = both.seal("secret", ALICE)
        relabelled = sealed.replace("pv1.k1.", "pv1.k2.", 1)
        with self.assertRaises(AtRestError) as cm:
            both.open_sync(relabelled, ALICE)
        self.assertEqual(cm.exception.problem, "tampered")

    def test_unknown_key_id(self) -> None:
        sealed = vault("k2").seal("secret", ALICE)
        with self.assertRaises(AtRestError) as cm:
            vault("k1").open_sync(sealed, ALICE)
        self.assertEqual((cm.exception.problem, cm.exception.kid), ("unknown_key", "k2"))
        # Without any key configured, an envelope cannot be read either.
        with self.assertRaises(AtRestError):
            SecretVault(None).open_sync(sealed, ALICE)

    def test_rotation_with_two_keys(self) -> None:
        old = vault("k1")
        sealed = old.seal("secret", ALICE)
        rotating = vault("k2", "k1", active="k2")
        self.assertTrue(rotating.needs_reseal(sealed))
        self.assertEqual(rotating.open_sync(sealed, ALICE), "secret")
        resealed = rotating.reseal(sealed, ALICE)
        self.assertEqual(envelope_kid(resealed), "k2")
        self.assertFalse(rotating.needs_reseal(resealed))
        # After rotation the old key can go: k2 alone opens it, k1 alone cannot.
        self.assertEqual(vault("k2").open_sync(resealed, ALICE), "secret")
        with self.assertRaises(AtRestError):
            vault("k1").open_sync(resealed, ALICE)

    def test_plaintext_fallback(self) -> None:
        self.assertEqual(vault("k1").open_sync("LEGACYSECRET", ALICE), "LEGACYSECRET")
        self.assertTrue(vault("k1").needs_reseal("LEGACYSECRET"))
        strict = vault("k1", accept_plaintext=False)
        with self.assertRaises(AtRestError) as cm:
            strict.open_sync("LEGACYSECRET", ALICE)
        self.assertEqual(cm.exception.problem, "plaintext_refused")
        # No key: stored as given.
        self.assertEqual(SecretVault(None).seal("s", ALICE), "s")

    async def test_open_audits_a_refusal(self) -> None:
        seen: list[AtRestError] = []

        async def on_refused(err: AtRestError) -> None:
            seen.append(err)

        v = vault("k1", on_refused=on_refused)
        sealed = v.seal("secret", ALICE)
        with self.assertRaises(AtRestError):
            await v.open(sealed, BOB)
        self.assertEqual([(e.problem, e.location) for e in seen], [("tampered", BOB)])
        self.assertEqual(await v.open(sealed, ALICE), "secret")
        self.assertEqual(len(seen), 1)

    def test_error_is_a_500_without_the_value(self) -> None:
        v = vault("k1")
        sealed = v.seal("TOPSECRETVALUE", ALICE)
        with self.assertRaises(AtRestError) as cm:
            v.open_sync(sealed, BOB)
        self.assertEqual(cm.exception.code, 500)
        self.assertNotIn("TOPSECRETVALUE", str(cm.exception) + repr(cm.exception.to_json()))
        self.assertNotIn(sealed, str(cm.exception))


class ConfigTest(unittest.TestCase):
    def test_single_key(self) -> None:
        key = new_kek_text()
        cfg = parse_at_rest({"at_rest_key": key})
        self.assertEqual(cfg.keys, (("default", base64.b64decode(key)),))
        self.assertEqual(cfg.active, "default")
        self.assertNotIn(key, repr(cfg))

    def test_several_keys_and_active(self) -> None:
        a, b = new_kek_text(), new_kek_text()
        cfg = parse_at_rest({"at_rest_keys": [{"id": "k1", "key": a}, {"id": "k2", "key": b}],
                             "active": "k2", "accept_plaintext": False})
        self.assertEqual([k for k, _ in cfg.keys], ["k1", "k2"])
        self.assertEqual(cfg.active, "k2")
        self.assertFalse(cfg.accept_plaintext)

    def test_env_key(self) -> None:
        key = new_kek_text()
        os.environ["PARLEY_TEST_AT_REST"] = key
        self.addCleanup(os.environ.pop, "PARLEY_TEST_AT_REST")
        cfg = parse_at_rest({"at_rest_key": {"env": "PARLEY_TEST_AT_REST"}})
        self.assertEqual(cfg.keys[0][1], base64.b64decode(key))

    def test_bad_keys(self) -> None:
        short = base64.b64encode(os.urandom(16)).decode()
        for raw in ({"at_rest_key": short}, {"at_rest_key": "not base64!!"},
                    {"at_rest_key": new_kek_text(),
                     "at_rest_keys": [{"id": "a", "key": new_kek_text()}]},
                    {"at_rest_keys": [{"id": "a", "key": new_kek_text()},
                                      {"id": "a", "key": new_kek_text()}]},
                    {"at_rest_keys": [{"id": "a", "key": new_kek_text()}], "active": "b"}):
            with self.assertRaises(ConfigError) as cm:
                parse_at_rest(raw)
            self.assertNotIn(str(raw.get("at_rest_key")), str(cm.exception))

    def test_no_key(self) -> None:
        cfg = parse_at_rest({})
        self.assertEqual((cfg.keys, cfg.active), ((), None))

    def test_decode_accepts_hex(self) -> None:
        raw = os.urandom(32)
        self.assertEqual(decode_kek(raw.hex(), "x"), raw)  # openssl rand -hex 32
        with self.assertRaises(ValueError):
            decode_kek(raw.hex()[:62], "x")

    def test_decode_accepts_urlsafe_unpadded(self) -> None:
        raw = os.urandom(32)
        text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        self.assertEqual(decode_kek(text, "x"), raw)


class SigningKeyFileTest(unittest.TestCase):
    def setUp(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="parley-atrest-"), "signing.key")

    def test_generated_encrypted_and_reloaded(self) -> None:
        v = vault("k1")
        key = load_or_generate(self.path, v)
        self.assertTrue(is_encrypted_file(self.path))
        with open(self.path) as f:
            text = f.read()
        self.assertNotIn("ed25519 ", text)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        again = load_or_generate(self.path, v)
        self.assertEqual((key_id(again), bytes(again)), (key_id(key), bytes(key)))
        # Without the key the file cannot be used: start-up fails, nothing is guessed.
        with self.assertRaises(ValueError):
            load_or_generate(self.path, SecretVault(None))

    def test_plaintext_file_still_read_then_encrypted_by_reseal(self) -> None:
        key = generate_signing_key("a_abc")
        write_signing_key_file(self.path, key)
        v = vault("k1")
        self.assertEqual(bytes(load_or_generate(self.path, v)), bytes(key))
        self.assertTrue(reseal_file(self.path, v))
        self.assertTrue(is_encrypted_file(self.path))
        self.assertFalse(reseal_file(self.path, v))  # already current
        rotated = vault("k2", "k1", active="k2")
        self.assertTrue(reseal_file(self.path, rotated))
        self.assertEqual(bytes(read_keys(self.path, vault("k2"))[0]), bytes(key))

    def test_tampered_file_is_refused(self) -> None:
        load_or_generate(self.path, vault("k1"))
        with open(self.path) as f:
            lines = f.read().splitlines()
        envelope = lines[-1]
        flipped = envelope[:-3] + ("A" if envelope[-3] != "A" else "B") + envelope[-2:]
        with open(self.path, "w") as f:
            f.write("\n".join([*lines[:-1], flipped]) + "\n")
        with self.assertRaises(ValueError):
            load_or_generate(self.path, vault("k1"))


class GenerateConfigTest(unittest.TestCase):
    """``parley generate-config`` with the KEK in the environment, then ``parley keys
    rotate`` as an operator runs them (subprocesses, SQLite)."""

    def parley(self, *args: str, key: str | None) -> Any:
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k != "PARLEY_AT_REST_KEY"}
        if key:
            env["PARLEY_AT_REST_KEY"] = key
        return subprocess.run([sys.executable, "-m", "homeserver", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    def test_generate_config_writes_the_key_file_encrypted(self) -> None:
        import yaml

        d = tempfile.mkdtemp(prefix="parley-atrest-")
        config = os.path.join(d, "parley.yaml")
        key = new_kek_text()
        out = self.parley("generate-config", "--output", config, "--data-dir",
                          os.path.join(d, "data"), key=key)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("(encrypted with secrets.at_rest_key)", out.stdout)
        with open(config) as f:
            text = f.read()
        self.assertNotIn(key, text)
        self.assertEqual(yaml.safe_load(text)["secrets"],
                         {"at_rest_key": {"env": "PARLEY_AT_REST_KEY"}})
        path = os.path.join(d, "data", "signing.key")
        self.assertTrue(is_encrypted_file(path))
        kek = decode_kek(key, "k")
        self.assertEqual(len(read_keys(path, SecretVault(Keyring({"default": kek},
                                                                  "default")))), 1)
        self.assertEqual(self.parley("migrate", "-c", config, key=key).returncode, 0)
        rot = self.parley("keys", "rotate", "-c", config, key=key)
        self.assertEqual(rot.returncode, 0, rot.stderr)
        self.assertIn("already under 'default'", rot.stdout)
        # Without the key in the environment the config does not load.
        self.assertEqual(self.parley("keys", "rotate", "-c", config, key=None).returncode, 1)

    def test_generate_config_without_key_is_unchanged(self) -> None:
        import yaml

        d = tempfile.mkdtemp(prefix="parley-atrest-")
        config = os.path.join(d, "parley.yaml")
        out = self.parley("generate-config", "--output", config, "--data-dir",
                          os.path.join(d, "data"), key=None)
        self.assertEqual(out.returncode, 0, out.stderr)
        with open(config) as f:
            self.assertNotIn("secrets", yaml.safe_load(f))
        self.assertFalse(os.path.exists(os.path.join(d, "data", "signing.key")))
