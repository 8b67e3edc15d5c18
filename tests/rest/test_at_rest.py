"""Secrets encrypted at rest, end to end on the database under test: TOTP secrets are
stored as envelopes, a ciphertext swapped between two users is refused and audited,
``parley keys rotate`` killed half-way leaves everything readable and a rerun finishes,
and the signing key file is encrypted while the server still signs its events."""

from __future__ import annotations

import io
import os
from typing import Any

import yaml

from homeserver import cli_keys
from homeserver.crypto.at_rest import (
    Keyring,
    Location,
    SecretVault,
    envelope_kid,
    is_envelope,
    new_kek_text,
)
from homeserver.crypto.signing_key_file import file_kek_id, is_encrypted_file, read_keys
from homeserver.events.signing import get_verify_key, verify_event_signature
from tests.harness import _test_key, pg_settings
from tests.rest.test_mfa import CS, TOTP, MfaTestCase

K1 = new_kek_text()
K2 = new_kek_text()


def _raw(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


class AtRestTestCase(MfaTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"secrets": {"at_rest_keys": [{"id": "k1", "key": K1}]}}

    async def raw_rows(self) -> dict[str, tuple[Any, Any]]:
        """user id -> (secret, pending_secret) exactly as stored."""
        rows = await self.hs.db.query(
            "test_raw_mfa", "SELECT user_id, secret, pending_secret FROM mfa_totp")
        return {r[0]: (r[1], r[2]) for r in rows}

    def config_file(self, keys: list[tuple[str, str]], active: str) -> str:
        """A YAML config for the CLI on this test's database and key file."""
        db = self.config.database
        if db.engine == "postgres":
            database: dict[str, Any] = {"engine": "postgres", "schema": db.schema,
                                        "pool_max": 2, **pg_settings()}
        else:
            database = {"engine": "sqlite", "path": db.path}
        raw = {"server_name": "test.local", "data_dir": self.data_dir, "database": database,
               "signing_key_path": self.config.signing_key_path,
               "auth": {"signing_keys": [{"kid": "test1", "algorithm": "EdDSA",
                                          "key": _test_key()}]},
               "secrets": {"at_rest_keys": [{"id": k, "key": v} for k, v in keys],
                           "active": active}}
        path = os.path.join(self.data_dir, "keys-cli.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        return path

    async def rotate(self, path: str, **kw: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await cli_keys.run(["rotate", "-c", path, "--batch", "2"], out, err, **kw)
        return code, out.getvalue(), err.getvalue()

    async def login_with_code(self, user: str, secret: str) -> Any:
        first = await self.login_first(user)
        return await self.login_second(first.json["session"], TOTP, self.code(secret))


class StoredEncryptedTest(AtRestTestCase):
    async def test_totp_secret_is_an_envelope_in_the_database(self) -> None:
        uid, token, _ = await self.user("alice")
        # Pending (enrolment started) and confirmed secrets are both encrypted.
        resp = await self.uia("POST", "/_parley/client/v1/mfa/totp/enroll", {}, token,
                              self.password(uid))
        self.assertEqual(resp.code, 200, resp)
        secret = resp.json["secret"]
        pending = (await self.raw_rows())[uid][1]
        self.assertTrue(is_envelope(pending), pending)
        self.assertNotIn(secret, pending)
        confirm = await self.request("POST", "/_parley/client/v1/mfa/totp/confirm",
                                     {"code": self.code(secret)}, token=token)
        self.assertEqual(confirm.code, 200, confirm)
        self.next_step()
        stored, pending = (await self.raw_rows())[uid]
        self.assertIsNone(pending)
        self.assertTrue(is_envelope(stored))
        self.assertEqual(envelope_kid(stored), "k1")
        self.assertNotIn(secret, stored)
        # The envelope opens only with the key and only for alice's row.
        vault = SecretVault(Keyring({"k1": _raw(K1)}, "k1"))
        self.assertEqual(vault.open_sync(stored, Location("mfa_totp", "secret", uid)), secret)
        # And the server uses it: password + code logs in.
        ok = await self.login_with_code("alice", secret)
        self.assertEqual(ok.code, 200, ok)

    async def test_swapped_ciphertext_is_refused_and_audited(self) -> None:
        alice, a_token, _ = await self.user("alice")
        bob, b_token, _ = await self.user("bob")
        _a_secret, _ = await self.enrol(alice, a_token)
        b_secret, _ = await self.enrol(bob, b_token)
        rows = await self.raw_rows()
        # An attacker with write access to the table gives alice bob's secret (whose
        # codes they know).
        await self.hs.db.execute("test_swap", "UPDATE mfa_totp SET secret = ? WHERE user_id = ?",
                                 rows[bob][0], alice)
        first = await self.login_first("alice")
        resp = await self.login_second(first.json["session"], TOTP, self.code(b_secret))
        self.assertMatrixError(resp, 500, "M_UNKNOWN")
        self.assertNotIn(b_secret, resp.raw.decode())
        self.assertNotIn("access_token", resp.json)
        refused = await self.events("at_rest_refused")
        self.assertTrue(refused, "no audit entry for the refused ciphertext")
        ev = refused[-1]
        self.assertEqual((ev.outcome, ev.reason, ev.target), ("failure", "tampered", alice))
        self.assertEqual(ev.details["table"], "mfa_totp")
        # Bob is unaffected.
        self.next_step()
        self.assertEqual((await self.login_with_code("bob", b_secret)).code, 200)

    async def test_plaintext_row_is_read_then_encrypted_by_rotate(self) -> None:
        uid, token, _ = await self.user("carol")
        secret, _ = await self.enrol(uid, token)
        # A row written before a key was configured.
        await self.hs.db.execute("test_plain", "UPDATE mfa_totp SET secret = ? WHERE user_id = ?",
                                 secret, uid)
        self.assertEqual((await self.login_with_code("carol", secret)).code, 200)
        code, out, err = await self.rotate(self.config_file([("k1", K1)], "k1"))
        self.assertEqual(code, 0, err)
        stored = (await self.raw_rows())[uid][0]
        self.assertEqual(envelope_kid(stored), "k1")


class RotationTest(AtRestTestCase):
    async def test_rotate_killed_half_way_then_rerun(self) -> None:
        secrets: dict[str, str] = {}
        for name in ("u1", "u2", "u3", "u4"):
            uid, token, _ = await self.user(name)
            secrets[uid] = (await self.enrol(uid, token))[0]
        # Key file written under k1 at start-up.
        self.assertEqual(file_kek_id(self.config.signing_key_path), "k1")
        path = self.config_file([("k2", K2), ("k1", K1)], "k2")
        calls: list[int] = []

        def crash_after_three() -> None:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("killed")

        with self.assertRaises(RuntimeError):
            await self.rotate(path, after_each=crash_after_three)
        both = SecretVault(Keyring({"k2": _raw(K2), "k1": _raw(K1)}, "k2"))
        rows = await self.raw_rows()
        kids = sorted(envelope_kid(v[0]) or "" for v in rows.values())
        self.assertEqual(kids, ["k1", "k1", "k2", "k2"])  # the file was the first value
        for uid, (stored, _) in rows.items():
            self.assertEqual(both.open_sync(stored, Location("mfa_totp", "secret", uid)),
                             secrets[uid])
        self.assertEqual(file_kek_id(self.config.signing_key_path), "k2")
        # The server, still configured with both keys, keeps working meanwhile.
        self.hs.stores.mfa.vault = both
        for uid, secret in secrets.items():
            self.assertEqual((await self.login_with_code(uid, secret)).code, 200)
        self.next_step()
        code, out, err = await self.rotate(path)
        self.assertEqual(code, 0, err)
        self.assertIn("2 re-encrypted", out)
        self.assertIn("k1 are no longer used", out)
        # Now k2 alone opens everything.
        only_k2 = SecretVault(Keyring({"k2": _raw(K2)}, "k2"))
        for uid, (stored, _) in (await self.raw_rows()).items():
            self.assertEqual(envelope_kid(stored), "k2")
            self.assertEqual(only_k2.open_sync(stored, Location("mfa_totp", "secret", uid)),
                             secrets[uid])
        self.assertEqual(len(read_keys(self.config.signing_key_path, only_k2)), 1)
        self.hs.stores.mfa.vault = only_k2
        for uid, secret in secrets.items():
            self.assertEqual((await self.login_with_code(uid, secret)).code, 200)
        done = [e for e in await self.events("at_rest_rotation") if e.outcome == "success"]
        self.assertEqual(len(done), 1)
        # A third run has nothing left to do.
        code, out, _ = await self.rotate(path)
        self.assertEqual(code, 0)
        self.assertIn("done: 0 re-encrypted, 5 already current", out)

    async def test_rotate_reports_refused_values(self) -> None:
        uid, token, _ = await self.user("eve")
        await self.enrol(uid, token)
        await self.hs.db.execute("test_corrupt", "UPDATE mfa_totp SET secret = ? WHERE user_id = ?",
                                 "pv1.k1.AAAA.AAAA.AAAA", uid)
        code, _out, err = await self.rotate(self.config_file([("k2", K2), ("k1", K1)], "k2"))
        self.assertEqual(code, 1)
        self.assertIn("REFUSED", err)
        self.assertTrue(await self.events("at_rest_refused"))
        # The bad value was left as it was, not overwritten.
        self.assertEqual((await self.raw_rows())[uid][0], "pv1.k1.AAAA.AAAA.AAAA")

    async def test_rotate_needs_a_key(self) -> None:
        db = self.config.database
        database: dict[str, Any] = ({"engine": "sqlite", "path": db.path} if db.engine == "sqlite"
                                    else {"engine": "postgres", "schema": db.schema,
                                          **pg_settings()})
        path = os.path.join(self.data_dir, "nokey.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"server_name": "test.local", "database": database,
                            "auth": {"signing_keys": [{"kid": "t", "algorithm": "EdDSA",
                                                       "key": _test_key()}]}}, f)
        code, _out, err = await self.rotate(path)
        self.assertEqual(code, 1)
        self.assertIn("no key configured", err)


class SigningKeyTest(AtRestTestCase):
    async def test_key_file_encrypted_and_events_signed(self) -> None:
        path = self.config.signing_key_path
        self.assertTrue(is_encrypted_file(path))
        with open(path) as f:
            self.assertNotIn("ed25519 ", f.read())
        key = read_keys(path, SecretVault(Keyring({"k1": _raw(K1)}, "k1")))[0]
        _uid, token, _ = await self.user("frank")
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=token)
        self.assertEqual(resp.code, 200, resp)
        room_id = resp.json["room_id"]
        sent = await self.request("PUT", f"{CS}/rooms/{room_id}/send/m.room.message/t1",
                                  {"msgtype": "m.text", "body": "hi"}, token=token)
        self.assertEqual(sent.code, 200, sent)
        event = await self.hs.stores.events.get_event(sent.json["event_id"])
        assert event is not None
        verify_event_signature(event.pdu, "test.local", get_verify_key(key), event.room_version)


class CliRegistrationTest(AtRestTestCase):
    async def test_registered_in_parley_cli(self) -> None:
        from homeserver import cli

        args = cli.build_parser().parse_args(["keys", "rotate", "-c", "x.yaml"])
        self.assertIs(args.func, cli_keys.cmd_keys)
        out = io.StringIO()
        self.assertEqual(await cli_keys.run(["generate"], out), 0)
        self.assertEqual(len(_raw(out.getvalue().strip())), 32)
