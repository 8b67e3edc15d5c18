"""Pushers' pushkeys sealed at rest (storage/stores/pushers.py, schema/0039): the column
holds an envelope bound to (user, app id) and ``pushkey_hash`` a keyed hash used for
every (app id, pushkey) lookup; rows from before still match by value; a pushkey moved
to another user's row is refused and audited; ``parley keys rotate`` reseals pushkeys
and their hashes (lookups keep working half-way)."""

from __future__ import annotations

import base64
from typing import Any

from homeserver.crypto.at_rest import (
    Keyring,
    SecretVault,
    envelope_kid,
    is_envelope,
    new_kek_text,
)
from storage.stores.pushers import PUSHKEY_PURPOSE, pushkey_location
from tests.rest.test_at_rest_content import ContentTestCase

CS = "/_matrix/client/v3"
GATEWAY = "https://push.example.org/_matrix/push/v1/notify"
K1 = new_kek_text()
K2 = new_kek_text()
TOKEN = "apns-device-token-0123456789abcdef"


def _vault(*keys: tuple[str, str]) -> SecretVault:
    return SecretVault(Keyring({k: base64.b64decode(v) for k, v in keys}, keys[0][0]))


class PusherTestCase(ContentTestCase):
    encrypt = False  # pushkeys are sealed whenever a key is configured

    def config_overrides(self) -> dict[str, Any]:
        return {"secrets": {"at_rest_keys": [{"id": "k1", "key": K1}]}}

    def body(self, pushkey: str = TOKEN, **extra: Any) -> dict[str, Any]:
        return {"kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
                "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
                "data": {"url": GATEWAY}, **extra}

    async def set_pusher(self, token: str, body: dict[str, Any]) -> None:
        resp = await self.request("POST", f"{CS}/pushers/set", body, token=token)
        self.assertEqual((resp.code, resp.json), (200, {}), resp)

    async def listed(self, token: str) -> list[str]:
        resp = await self.request("GET", f"{CS}/pushers", token=token)
        self.assertEqual(resp.code, 200, resp)
        return sorted(p["pushkey"] for p in resp.json["pushers"])

    async def raw(self) -> list[tuple[str, str, str, Any]]:
        rows = await self.hs.db.query(
            "test_raw_pushers",
            "SELECT user_id, app_id, pushkey, pushkey_hash FROM pushers ORDER BY user_id")
        return [(r[0], r[1], r[2], r[3]) for r in rows]


class SealedPushkeyTest(PusherTestCase):
    async def test_stored_sealed_with_keyed_hash_and_listed_plain(self) -> None:
        uid, token = await self.user("alice")
        await self.set_pusher(token, self.body())
        [(user, app, stored, lookup)] = await self.raw()
        self.assertEqual((user, app), (uid, "org.example.app"))
        self.assertTrue(is_envelope(stored) and TOKEN not in stored, stored)
        self.assertEqual(envelope_kid(stored), "k1")
        self.assertTrue(lookup.startswith("k1:") and TOKEN not in lookup, lookup)
        # The hash is keyed: not the plain SHA-256 of the token.
        self.assertNotEqual(lookup, SecretVault(None).lookup_hash(TOKEN, PUSHKEY_PURPOSE))
        self.assertEqual(_vault(("k1", K1)).open_sync(stored, pushkey_location(uid, app)),
                         TOKEN)
        self.assertEqual(await self.listed(token), [TOKEN])

    async def test_uniqueness_replace_append_and_delete_by_hash(self) -> None:
        _a, alice = await self.user("alice")
        _b, bob = await self.user("bob")
        await self.set_pusher(alice, self.body())
        await self.set_pusher(alice, self.body(lang="de"))  # same key: replaced
        self.assertEqual(len(await self.raw()), 1)
        await self.set_pusher(alice, self.body("other-token"))
        self.assertEqual(await self.listed(alice), sorted([TOKEN, "other-token"]))
        # Bob takes Alice's token without append: hers is removed (found by hash).
        await self.set_pusher(bob, self.body())
        self.assertEqual(await self.listed(alice), ["other-token"])
        await self.set_pusher(alice, self.body(append=True))
        self.assertEqual(await self.listed(bob), [TOKEN])
        self.assertEqual(await self.listed(alice), sorted([TOKEN, "other-token"]))
        # Deletion (kind null) finds the sealed row too.
        await self.set_pusher(alice, {"kind": None, "app_id": "org.example.app",
                                      "pushkey": TOKEN})
        self.assertEqual(await self.listed(alice), ["other-token"])
        self.assertEqual(await self.listed(bob), [TOKEN])

    async def test_pushkey_moved_to_another_user_is_refused_and_audited(self) -> None:
        _a, alice = await self.user("alice")
        bob_id, bob = await self.user("bob")
        await self.set_pusher(alice, self.body())
        await self.set_pusher(bob, self.body("bob-token"))
        rows = {r[0]: r for r in await self.raw()}
        alice_row = next(r for u, r in rows.items() if u != bob_id)
        await self.hs.db.execute("test_move", "UPDATE pushers SET pushkey = ? WHERE user_id = ?",
                                 alice_row[2], bob_id)
        resp = await self.request("GET", f"{CS}/pushers", token=bob)
        self.assertMatrixError(resp, 500, "M_UNKNOWN")
        self.assertNotIn(TOKEN, resp.raw.decode())
        refused = await self.audit("at_rest_refused")
        self.assertEqual((refused[-1].reason, refused[-1].details["table"]),
                         ("tampered", "pushers"))
        self.assertEqual(await self.listed(alice), [TOKEN])


class LegacyAndRotationTest(PusherTestCase):
    async def test_plaintext_row_without_hash_still_matches_then_rotate_seals_it(self) -> None:
        uid, token = await self.user("carol")
        await self.set_pusher(token, self.body())
        # A row as written before schema 0039 / before a key was configured.
        await self.hs.db.execute("test_legacy",
                                 "UPDATE pushers SET pushkey = ?, pushkey_hash = NULL", TOKEN)
        self.assertEqual(await self.listed(token), [TOKEN])
        await self.set_pusher(token, self.body(lang="fr"))  # replaces it, no duplicate
        [(_u, _app, stored, lookup)] = await self.raw()
        self.assertTrue(is_envelope(stored) and lookup.startswith("k1:"))
        await self.hs.db.execute("test_legacy",
                                 "UPDATE pushers SET pushkey = ?, pushkey_hash = NULL", TOKEN)
        code, out, err = await self.rotate(self.config_file([("k1", K1)], "k1", False))
        self.assertEqual(code, 0, err)
        self.assertIn("pushers: 1 values checked", out)
        [(_u, _app, stored, lookup)] = await self.raw()
        self.assertEqual(envelope_kid(stored), "k1")
        self.assertTrue(lookup.startswith("k1:"))
        self.assertEqual(await self.listed(token), [TOKEN])
        # Deleting by the token finds it by hash.
        await self.set_pusher(token, {"kind": None, "app_id": "org.example.app",
                                      "pushkey": TOKEN})
        self.assertEqual(await self.raw(), [])

    async def test_rotation_to_a_new_key_and_lookups_half_way(self) -> None:
        tokens = [f"token-{i}" for i in range(4)]
        _uid, token = await self.user("dave")
        for t in tokens:
            await self.set_pusher(token, self.body(t))
        calls: list[int] = []

        def crash_after_three() -> None:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("killed")

        path = self.config_file([("k2", K2), ("k1", K1)], "k2", False)
        with self.assertRaises(RuntimeError):
            await self.rotate(path, after_each=crash_after_three)
        kids = sorted(envelope_kid(r[2]) or "" for r in await self.raw())
        self.assertEqual(kids, ["k1", "k1", "k2", "k2"])  # the key file was the first value
        # With both keys configured, every pushkey is listed and found by its hash.
        self.use_vault(_vault(("k2", K2), ("k1", K1)), False)
        self.assertEqual(await self.listed(token), tokens)
        await self.set_pusher(token, {"kind": None, "app_id": "org.example.app",
                                      "pushkey": "token-3"})
        await self.set_pusher(token, self.body("token-0", lang="de"))
        self.assertEqual(len(await self.raw()), 3)
        code, _out, err = await self.rotate(path)
        self.assertEqual(code, 0, err)
        self.use_vault(_vault(("k2", K2)), False)
        rows = await self.raw()
        self.assertTrue(all(envelope_kid(r[2]) == "k2" and r[3].startswith("k2:") for r in rows))
        self.assertEqual(await self.listed(token), tokens[:3])
        await self.set_pusher(token, {"kind": None, "app_id": "org.example.app",
                                      "pushkey": "token-1"})
        self.assertEqual(await self.listed(token), ["token-0", "token-2"])


class NoKeyTest(PusherTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {}

    async def test_without_a_key_plaintext_with_unkeyed_hash(self) -> None:
        _uid, token = await self.user("erin")
        await self.set_pusher(token, self.body())
        [(_u, _app, stored, lookup)] = await self.raw()
        self.assertEqual(stored, TOKEN)
        self.assertEqual(lookup, SecretVault(None).lookup_hash(TOKEN, PUSHKEY_PURPOSE))
        await self.set_pusher(token, self.body(lang="de"))
        self.assertEqual(len(await self.raw()), 1)
