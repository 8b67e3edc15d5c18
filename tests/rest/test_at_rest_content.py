"""Optional encryption at rest of event JSON and profile fields
(``secrets.encrypt_event_content`` / ``secrets.encrypt_profiles``), on the database
under test: what the database holds is ciphertext bound to its row, every read path
(sync, /messages, /event, /context, state, profiles, user directory, admin user list)
sees plaintext, a ciphertext moved to another row is refused and audited, old
plaintext rows still read, and ``parley keys rotate`` re-encrypts (or, with the option
switched off again, decrypts) them."""

from __future__ import annotations

import base64
import io
import os
from typing import Any
from urllib.parse import quote

import yaml

from homeserver import cli_keys
from homeserver.config import ConfigError
from homeserver.crypto.at_rest import Keyring, SecretVault, envelope_kid, is_envelope, new_kek_text
from homeserver.crypto.content import (
    FieldCodec,
    event_location,
    install_content_codecs,
    profile_field_location,
    profile_location,
)
from tests.harness import HomeserverTestCase, _test_key, make_config, pg_settings

CS = "/_matrix/client/v3"
K1 = new_kek_text()
K2 = new_kek_text()
SECRET_BODY = "the launch code is 0000 (do not tell anyone)"


def _vault(*keys: tuple[str, str], active: str | None = None) -> SecretVault:
    ring = {kid: base64.b64decode(k) for kid, k in keys}
    return SecretVault(Keyring(ring, active or keys[0][0]))


class ContentTestCase(HomeserverTestCase):
    encrypt = True

    def config_overrides(self) -> dict[str, Any]:
        return {"secrets": {"at_rest_keys": [{"id": "k1", "key": K1}],
                            "encrypt_event_content": self.encrypt,
                            "encrypt_profiles": self.encrypt}}

    async def user(self, name: str) -> tuple[str, str]:
        body = await self.register(name)
        return body["user_id"], body["access_token"]

    async def room_with_message(self, token: str, body: str = SECRET_BODY
                                ) -> tuple[str, str]:
        resp = await self.request("POST", f"{CS}/createRoom",
                                  {"name": "Secret plans", "topic": "shh"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        room_id = resp.json["room_id"]
        sent = await self.request(
            "PUT", f"{CS}/rooms/{quote(room_id)}/send/m.room.message/t-{len(body)}",
            {"msgtype": "m.text", "body": body}, token=token)
        self.assertEqual(sent.code, 200, sent)
        return room_id, sent.json["event_id"]

    async def raw_json(self) -> dict[str, str]:
        rows = await self.hs.db.query("test_raw_events", "SELECT event_id, json FROM events")
        return {r[0]: r[1] for r in rows}

    async def raw_profile(self, user_id: str) -> tuple[Any, Any]:
        row = await self.hs.db.query_one(
            "test_raw_profile", "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?",
            user_id)
        assert row is not None
        return row[0], row[1]

    async def audit(self, event_type: str) -> list[Any]:
        return await self.hs.stores.security_events.list_events(event_type=event_type)

    def config_file(self, keys: list[tuple[str, str]], active: str, encrypt: bool) -> str:
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
                           "active": active, "encrypt_event_content": encrypt,
                           "encrypt_profiles": encrypt}}
        path = os.path.join(self.data_dir, f"content-{active}-{encrypt}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        return path

    async def rotate(self, path: str, **kw: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await cli_keys.run(["rotate", "-c", path, "--batch", "3"], out, err, **kw)
        return code, out.getvalue(), err.getvalue()

    def use_vault(self, vault: SecretVault, encrypt: bool) -> None:
        """Point the running server at other keys (as a restart with a new config)."""
        config = make_config(self.data_dir, "sqlite", secrets={
            "at_rest_key": K1, "encrypt_event_content": encrypt, "encrypt_profiles": encrypt,
        })[0]
        self.hs.stores.mfa.vault = vault
        install_content_codecs(config, self.hs.stores, vault)


class StoredSealedTest(ContentTestCase):
    async def test_event_json_is_ciphertext_and_every_read_path_decrypts(self) -> None:
        _uid, token = await self.user("alice")
        room_id, event_id = await self.room_with_message(token)
        raw = await self.raw_json()
        self.assertTrue(raw, "no events stored")
        for eid, stored in raw.items():
            self.assertTrue(is_envelope(stored), f"{eid} stored in plaintext")
            self.assertEqual(envelope_kid(stored), "k1")
        self.assertNotIn("launch code", raw[event_id])
        self.assertNotIn("Secret plans", "".join(raw.values()))
        # Bound to its row: opens under its own event id only.
        codec = FieldCodec(_vault(("k1", K1)), True)
        self.assertIn("launch code", codec.open(raw[event_id], event_location(event_id)))
        # Read paths: sync, /messages, /event, /context, room state.
        sync = await self.request("GET", f"{CS}/sync", token=token)
        self.assertEqual(sync.code, 200, sync)
        timeline = sync.json["rooms"]["join"][room_id]["timeline"]["events"]
        self.assertIn(SECRET_BODY, [e["content"].get("body") for e in timeline])
        msgs = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/messages?dir=b",
                                  token=token)
        self.assertEqual(msgs.code, 200, msgs)
        self.assertIn(SECRET_BODY, [e["content"].get("body") for e in msgs.json["chunk"]])
        one = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(event_id)}",
                                 token=token)
        self.assertEqual((one.code, one.json["content"]["body"]), (200, SECRET_BODY), one)
        ctx = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/context/"
                                 f"{quote(event_id)}", token=token)
        self.assertEqual(ctx.json["event"]["content"]["body"], SECRET_BODY, ctx)
        name = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/state/m.room.name",
                                  token=token)
        self.assertEqual(name.json, {"name": "Secret plans"})
        # An incremental sync after another message.
        sent = await self.request("PUT", f"{CS}/rooms/{quote(room_id)}/send/m.room.message/t2",
                                  {"msgtype": "m.text", "body": "second"}, token=token)
        self.assertEqual(sent.code, 200, sent)
        inc = await self.request("GET", f"{CS}/sync?since={sync.json['next_batch']}",
                                 token=token)
        bodies = [e["content"].get("body")
                  for e in inc.json["rooms"]["join"][room_id]["timeline"]["events"]]
        self.assertEqual(bodies, ["second"])

    async def test_profile_fields_are_ciphertext_and_read_back(self) -> None:
        uid, token = await self.user("bob")
        # The display name written at registration is sealed too.
        name, _ = await self.raw_profile(uid)
        self.assertTrue(is_envelope(name), name)
        for field, value in (("displayname", "Bob Secret"), ("avatar_url", "mxc://x/y"),
                             ("m.tz", "Europe/Paris")):
            resp = await self.request("PUT", f"{CS}/profile/{quote(uid)}/{field}",
                                      {field: value}, token=token)
            self.assertEqual(resp.code, 200, resp)
        name, avatar = await self.raw_profile(uid)
        self.assertTrue(is_envelope(name) and is_envelope(avatar), (name, avatar))
        self.assertNotIn("Bob Secret", name)
        row = await self.hs.db.query_one(
            "test_raw_field", "SELECT value FROM profile_fields WHERE user_id = ?", uid)
        assert row is not None
        self.assertTrue(is_envelope(row[0]))
        codec = FieldCodec(_vault(("k1", K1)), True)
        self.assertEqual(codec.open(name, profile_location(uid, "displayname")), "Bob Secret")
        self.assertEqual(codec.open(row[0], profile_field_location(uid, "m.tz")),
                         '"Europe/Paris"')
        prof = await self.request("GET", f"{CS}/profile/{quote(uid)}", token=token)
        self.assertEqual(prof.json, {"displayname": "Bob Secret", "avatar_url": "mxc://x/y",
                                     "m.tz": "Europe/Paris"})
        # The membership event built from the profile carries the plaintext name.
        room_id, _ = await self.room_with_message(token)
        member = await self.request(
            "GET", f"{CS}/rooms/{quote(room_id)}/state/m.room.member/{quote(uid)}", token=token)
        self.assertEqual(member.json.get("displayname"), "Bob Secret", member)

    async def test_directory_and_admin_list_show_plaintext_and_never_match_ciphertext(
            self) -> None:
        uid, token = await self.user("carol")
        await self.request("PUT", f"{CS}/profile/{quote(uid)}/displayname",
                           {"displayname": "Carol Secret"}, token=token)
        _other, other_token = await self.user("dave")
        # Share a room so carol is visible to dave.
        room_id, _ = await self.room_with_message(token)
        joined = await self.request("POST", f"{CS}/rooms/{quote(room_id)}/invite",
                                    {"user_id": _other}, token=token)
        self.assertEqual(joined.code, 200, joined)
        self.assertEqual((await self.request("POST", f"{CS}/join/{quote(room_id)}", {},
                                             token=other_token)).code, 200)
        found = await self.request("POST", f"{CS}/user_directory/search",
                                   {"search_term": "carol"}, token=other_token)
        self.assertEqual(found.code, 200, found)
        self.assertEqual([(r["user_id"], r.get("display_name")) for r in found.json["results"]],
                         [(uid, "Carol Secret")])
        # The sealed name is opaque to SQL: neither its words nor the envelope prefix match.
        for term in ("Secret", "pv1"):
            none = await self.request("POST", f"{CS}/user_directory/search",
                                      {"search_term": term}, token=other_token)
            self.assertEqual(none.json["results"], [], term)
        # The admin user list opens it too.
        await self.hs.db.execute("test_admin", "UPDATE users SET is_admin = ? WHERE user_id = ?",
                                 True, uid)
        users = await self.request("GET", "/_synapse/admin/v2/users?name=carol", token=token)
        self.assertEqual(users.code, 200, users)
        self.assertEqual([u.get("displayname") for u in users.json["users"]], ["Carol Secret"])
        one = await self.request("GET", f"/_synapse/admin/v2/users/{quote(uid)}", token=token)
        self.assertEqual(one.json.get("displayname"), "Carol Secret", one)


class RefusedTest(ContentTestCase):
    async def test_event_json_moved_to_another_row_is_refused_and_audited(self) -> None:
        _uid, token = await self.user("erin")
        room_id, first = await self.room_with_message(token, "first message")
        sent = await self.request("PUT", f"{CS}/rooms/{quote(room_id)}/send/m.room.message/t9",
                                  {"msgtype": "m.text", "body": "second message"}, token=token)
        second = sent.json["event_id"]
        raw = await self.raw_json()
        # Someone with write access to the table copies one event's ciphertext over another.
        await self.hs.db.execute("test_move", "UPDATE events SET json = ? WHERE event_id = ?",
                                 raw[first], second)
        resp = await self.request(
            "GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(second)}", token=token)
        self.assertMatrixError(resp, 500, "M_UNKNOWN")
        self.assertNotIn("message", resp.raw.decode())
        refused = await self.audit("at_rest_refused")
        self.assertTrue(refused, "no audit entry")
        self.assertEqual((refused[-1].reason, refused[-1].target), ("tampered", second))
        self.assertEqual(refused[-1].details["table"], "events")
        # A flipped bit is refused too.
        stored = raw[first]
        flipped = stored[:-2] + ("A" if stored[-2] != "A" else "B") + stored[-1]
        await self.hs.db.execute("test_flip", "UPDATE events SET json = ? WHERE event_id = ?",
                                 flipped, first)
        resp = await self.request(
            "GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(first)}", token=token)
        self.assertMatrixError(resp, 500, "M_UNKNOWN")

    async def test_profile_value_moved_to_another_user_is_refused(self) -> None:
        a, a_token = await self.user("frank")
        b, _ = await self.user("grace")
        await self.request("PUT", f"{CS}/profile/{quote(a)}/displayname",
                           {"displayname": "Frank"}, token=a_token)
        name, _ = await self.raw_profile(a)
        await self.hs.db.execute("test_move_name",
                                 "UPDATE profiles SET displayname = ? WHERE user_id = ?", name, b)
        resp = await self.request("GET", f"{CS}/profile/{quote(b)}", token=a_token)
        self.assertMatrixError(resp, 500, "M_UNKNOWN")
        refused = await self.audit("at_rest_refused")
        self.assertEqual((refused[-1].target, refused[-1].details["table"]), (b, "profiles"))


class MixedAndRotationTest(ContentTestCase):
    async def test_plaintext_rows_still_read_and_rotate_seals_them(self) -> None:
        uid, token = await self.user("heidi")
        room_id, event_id = await self.room_with_message(token)
        codec = FieldCodec(_vault(("k1", K1)), True)
        raw = await self.raw_json()
        # Rows as written before the option was switched on.
        for eid, stored in raw.items():
            await self.hs.db.execute("test_plain", "UPDATE events SET json = ? WHERE event_id = ?",
                                     codec.open(stored, event_location(eid)), eid)
        await self.hs.db.execute("test_plain_name",
                                 "UPDATE profiles SET displayname = ? WHERE user_id = ?",
                                 "Heidi Plain", uid)
        one = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(event_id)}",
                                 token=token)
        self.assertEqual(one.json["content"]["body"], SECRET_BODY, one)
        prof = await self.request("GET", f"{CS}/profile/{quote(uid)}", token=token)
        self.assertEqual(prof.json["displayname"], "Heidi Plain")
        code, out, err = await self.rotate(self.config_file([("k1", K1)], "k1", True))
        self.assertEqual(code, 0, err)
        self.assertIn(f"{len(raw) + 1} re-encrypted", out)
        self.assertTrue(all(envelope_kid(v) == "k1" for v in (await self.raw_json()).values()))
        self.assertTrue(is_envelope((await self.raw_profile(uid))[0]))
        one = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(event_id)}",
                                 token=token)
        self.assertEqual(one.json["content"]["body"], SECRET_BODY, one)

    async def test_rotate_to_a_new_key_killed_half_way_then_rerun(self) -> None:
        uid, token = await self.user("ivan")
        await self.request("PUT", f"{CS}/profile/{quote(uid)}/m.tz", {"m.tz": "UTC"},
                           token=token)
        room_id, event_id = await self.room_with_message(token)
        path = self.config_file([("k2", K2), ("k1", K1)], "k2", True)
        calls: list[int] = []

        def crash_after_five() -> None:
            calls.append(1)
            if len(calls) == 5:
                raise RuntimeError("killed")

        with self.assertRaises(RuntimeError):
            await self.rotate(path, after_each=crash_after_five)
        kids = {envelope_kid(v) for v in (await self.raw_json()).values()}
        self.assertEqual(kids, {"k1", "k2"})  # half-way: both keys in use
        # With both keys configured everything reads meanwhile.
        self.use_vault(_vault(("k2", K2), ("k1", K1)), True)
        one = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(event_id)}",
                                 token=token)
        self.assertEqual(one.json["content"]["body"], SECRET_BODY, one)
        code, out, err = await self.rotate(path)
        self.assertEqual(code, 0, err)
        self.assertIn("k1 are no longer used", out)
        # k2 alone now opens every event and profile value.
        self.use_vault(_vault(("k2", K2)), True)
        self.assertEqual({envelope_kid(v) for v in (await self.raw_json()).values()}, {"k2"})
        sync = await self.request("GET", f"{CS}/sync", token=token)
        bodies = [e["content"].get("body")
                  for e in sync.json["rooms"]["join"][room_id]["timeline"]["events"]]
        self.assertIn(SECRET_BODY, bodies)
        prof = await self.request("GET", f"{CS}/profile/{quote(uid)}", token=token)
        self.assertEqual((prof.code, prof.json.get("m.tz")), (200, "UTC"), prof)

    async def test_switched_off_rotate_writes_plaintext_back(self) -> None:
        uid, token = await self.user("judy")
        room_id, event_id = await self.room_with_message(token)
        code, _out, err = await self.rotate(self.config_file([("k1", K1)], "k1", False))
        self.assertEqual(code, 0, err)
        raw = await self.raw_json()
        self.assertFalse(any(is_envelope(v) for v in raw.values()))
        self.assertIn("launch code", raw[event_id])
        self.assertFalse(is_envelope((await self.raw_profile(uid))[0]))
        self.use_vault(_vault(("k1", K1)), False)
        one = await self.request("GET", f"{CS}/rooms/{quote(room_id)}/event/{quote(event_id)}",
                                 token=token)
        self.assertEqual(one.json["content"]["body"], SECRET_BODY, one)

    async def test_rotate_reports_a_tampered_event_and_leaves_it(self) -> None:
        _uid, token = await self.user("mallory")
        _room, event_id = await self.room_with_message(token)
        await self.hs.db.execute("test_bad", "UPDATE events SET json = ? WHERE event_id = ?",
                                 "pv1.k1.AAAA.AAAA.AAAA", event_id)
        code, _out, err = await self.rotate(self.config_file([("k2", K2), ("k1", K1)], "k2",
                                                             True))
        self.assertEqual(code, 1)
        self.assertIn(f"events.json of {event_id}: REFUSED", err)
        self.assertEqual((await self.raw_json())[event_id], "pv1.k1.AAAA.AAAA.AAAA")


class OffByDefaultTest(ContentTestCase):
    encrypt = False

    async def test_default_stores_plaintext(self) -> None:
        uid, token = await self.user("oscar")
        _room, event_id = await self.room_with_message(token)
        self.assertIn("launch code", (await self.raw_json())[event_id])
        self.assertFalse(is_envelope((await self.raw_profile(uid))[0]))


class ConfigTest(ContentTestCase):
    async def test_needs_a_key_and_excludes_search(self) -> None:
        with self.assertRaises(ConfigError) as e:
            make_config(self.data_dir, secrets={"encrypt_event_content": True})
        self.assertIn("needs a key", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            make_config(self.data_dir, secrets={"at_rest_key": K1, "encrypt_profiles": True,
                                                "encrypt_event_content": True},
                        search={"enabled": True})
        self.assertIn("search.enabled", str(e.exception))
        # Profiles alone may be combined with search.
        config, _ = make_config(self.data_dir, "sqlite",
                                secrets={"at_rest_key": K1, "encrypt_profiles": True},
                                search={"enabled": True})
        self.assertTrue(config.at_rest.encrypt_profiles)
        self.assertFalse(config.at_rest.encrypt_event_content)
