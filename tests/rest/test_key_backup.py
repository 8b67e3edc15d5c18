"""Server-side key backups: versions, key upload/replacement, etags, errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.handlers.key_backup import parse_version, should_replace
from storage.stores.key_backup import RoomKey
from tests.harness import HomeserverTestCase

VERSION = "/_matrix/client/v3/room_keys/version"
KEYS = "/_matrix/client/v3/room_keys/keys"
ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:test"
ROOM2 = "!other:test"
AUTH_DATA = {"public_key": "abcdefg", "signatures": {"@alice:test": {"ed25519:DEV": "sig"}}}


def key(fmi: int = 1, fc: int = 0, verified: bool = False, data: str = "a") -> dict[str, Any]:
    return {"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
            "session_data": {"ephemeral": "e", "ciphertext": data, "mac": "m"}}


def session_path(room: str = ROOM, session: str = "s1", version: str = "1") -> str:
    return f"{KEYS}/{quote(room)}/{quote(session)}?version={version}"


def room_path(room: str = ROOM, version: str = "1") -> str:
    return f"{KEYS}/{quote(room)}?version={version}"


class ReplacementRuleTest(unittest.TestCase):
    def test_rules_rank_verified_then_index_then_forwards(self) -> None:
        def k(fmi: int, fc: int, v: bool) -> RoomKey:
            return RoomKey(fmi, fc, v, {})

        # Verified beats unverified, whatever the indexes.
        self.assertTrue(should_replace(k(0, 0, False), k(9, 9, True)))
        self.assertFalse(should_replace(k(9, 9, True), k(0, 0, False)))
        # Between equally verified keys a lower first_message_index wins...
        self.assertTrue(should_replace(k(5, 0, False), k(4, 9, False)))
        self.assertTrue(should_replace(k(5, 0, True), k(4, 9, True)))
        # ...and a higher one never wins, even forwarded fewer times (synapse#13704).
        self.assertFalse(should_replace(k(5, 3, True), k(6, 0, True)))
        # Then a lower forwarded_count.
        self.assertTrue(should_replace(k(5, 3, False), k(5, 2, False)))
        # An equal key does not replace (the etag stays).
        self.assertFalse(should_replace(k(5, 3, False), k(5, 3, False)))
        self.assertFalse(should_replace(k(5, 3, True), k(5, 3, True)))

    def test_parse_version(self) -> None:
        self.assertEqual(parse_version("1"), 1)
        self.assertEqual(parse_version("42"), 42)
        for bad in ("", "0", "01", "-1", "+1", " 1", "1.0", "abc", "1" * 19, "١"):
            self.assertIsNone(parse_version(bad), bad)


class KeyBackupTest(HomeserverTestCase):
    async def user(self, name: str = "alice") -> str:
        return (await self.register(name))["access_token"]

    async def create(self, token: str, auth_data: dict[str, Any] | None = None) -> str:
        resp = await self.request("POST", VERSION, {"algorithm": ALG, "auth_data": auth_data or AUTH_DATA},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertIsInstance(resp.json["version"], str)
        return resp.json["version"]

    # ------------------------------------------------------------------ versions
    async def test_version_lifecycle(self) -> None:
        token = await self.user()
        resp = await self.request("GET", VERSION, token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

        v1 = await self.create(token)
        resp = await self.request("GET", VERSION, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"algorithm": ALG, "auth_data": AUTH_DATA, "count": 0,
                                     "etag": resp.json["etag"], "version": v1})
        self.assertIsInstance(resp.json["etag"], str)
        resp2 = await self.request("GET", f"{VERSION}/{v1}", token=token)
        self.assertEqual(resp2.json, resp.json)

        v2 = await self.create(token, {"public_key": "second"})
        self.assertGreater(int(v2), int(v1))
        resp = await self.request("GET", VERSION, token=token)
        self.assertEqual(resp.json["version"], v2)
        self.assertEqual(resp.json["auth_data"], {"public_key": "second"})
        # The old version is still readable.
        resp = await self.request("GET", f"{VERSION}/{v1}", token=token)
        self.assertEqual(resp.json["auth_data"], AUTH_DATA)

        # Delete the current version: the previous one becomes current again.
        resp = await self.request("DELETE", f"{VERSION}/{v2}", token=token)
        self.assertEqual((resp.code, resp.json), (200, {}))
        resp = await self.request("GET", f"{VERSION}/{v2}", token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", VERSION, token=token)
        self.assertEqual(resp.json["version"], v1)
        resp = await self.request("DELETE", f"{VERSION}/{v2}", token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

        # Version numbers are never reused, even after a delete.
        v3 = await self.create(token)
        self.assertGreater(int(v3), int(v2))

    async def test_unknown_versions(self) -> None:
        token = await self.user()
        await self.create(token)
        for v in ("987654", "0", "abc", "01", "9" * 40, "%F0%9F%94%91"):
            resp = await self.request("GET", f"{VERSION}/{v}", token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            resp = await self.request("DELETE", f"{VERSION}/{v}", token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            resp = await self.request("PUT", f"{VERSION}/{v}", {"algorithm": ALG, "auth_data": AUTH_DATA},
                                      token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            resp = await self.request("GET", f"{KEYS}?version={v}", token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_update_version(self) -> None:
        token = await self.user()
        v = await self.create(token)
        new_auth = {"public_key": "abcdefg", "signatures": {"@alice:test": {"ed25519:NEW": "sig2"}}}
        resp = await self.request("PUT", f"{VERSION}/{v}", {"algorithm": ALG, "auth_data": new_auth,
                                                              "version": v}, token=token)
        self.assertEqual((resp.code, resp.json), (200, {}))
        resp = await self.request("GET", f"{VERSION}/{v}", token=token)
        self.assertEqual(resp.json["auth_data"], new_auth)
        # Without "version" in the body is fine too.
        resp = await self.request("PUT", f"{VERSION}/{v}", {"algorithm": ALG, "auth_data": AUTH_DATA},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)

        resp = await self.request("PUT", f"{VERSION}/{v}", {"algorithm": ALG, "auth_data": AUTH_DATA,
                                                              "version": "999"}, token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", f"{VERSION}/{v}", {"algorithm": "m.other", "auth_data": AUTH_DATA},
                                  token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{VERSION}/{v}", token=token)
        self.assertEqual(resp.json["auth_data"], AUTH_DATA)

    async def test_create_rejects_bad_bodies(self) -> None:
        token = await self.user()
        cases: list[tuple[Any, str]] = [
            ({}, "M_MISSING_PARAM"),
            ({"algorithm": ALG}, "M_MISSING_PARAM"),
            ({"auth_data": AUTH_DATA}, "M_MISSING_PARAM"),
            ({"algorithm": ALG, "auth_data": {}}, "M_MISSING_PARAM"),
            ({"algorithm": ALG, "auth_data": "x"}, "M_BAD_JSON"),
            ({"algorithm": 1, "auth_data": AUTH_DATA}, "M_BAD_JSON"),
            ({"algorithm": ALG, "auth_data": {"public_key": 5}}, "M_BAD_JSON"),
            # Any algorithm name is accepted (as Synapse), but it must be a name.
            ({"algorithm": "not an algorithm", "auth_data": AUTH_DATA}, "M_INVALID_PARAM"),
            ({"algorithm": "", "auth_data": AUTH_DATA}, "M_INVALID_PARAM"),
            ({"algorithm": "m." + "x" * 300, "auth_data": AUTH_DATA}, "M_INVALID_PARAM"),
            ({"algorithm": "m.other", "auth_data": 5}, "M_BAD_JSON"),
        ]
        for body, errcode in cases:
            resp = await self.request("POST", VERSION, body, token=token)
            self.assertMatrixError(resp, 400, errcode)
            resp = await self.request("PUT", f"{VERSION}/1", body, token=token)
            self.assertMatrixError(resp, 400, errcode)
        for path, method in ((VERSION, "POST"), (f"{VERSION}/1", "PUT")):
            resp = await self.request(method, path, raw_body=b"{not json", token=token)
            self.assertMatrixError(resp, 400, "M_NOT_JSON")
            resp = await self.request(method, path, [], token=token)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        big = {"public_key": "k", "signatures": {"x": "y" * 20000}}
        resp = await self.request("POST", VERSION, {"algorithm": ALG, "auth_data": big}, token=token)
        self.assertMatrixError(resp, 400, "M_TOO_LARGE")
        resp = await self.request("GET", VERSION, token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    # ------------------------------------------------------------------ keys
    async def test_upload_and_get_keys_at_three_levels(self) -> None:
        token = await self.user()
        v = await self.create(token)
        resp = await self.request("PUT", session_path(version=v), key(), token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["count"], 1)
        etag1 = resp.json["etag"]
        self.assertIsInstance(etag1, str)
        resp = await self.request("PUT", room_path(version=v), {"sessions": {"s2": key(2)}}, token=token)
        self.assertEqual(resp.json["count"], 2)
        etag2 = resp.json["etag"]
        self.assertNotEqual(etag2, etag1)
        resp = await self.request("PUT", f"{KEYS}?version={v}",
                                  {"rooms": {ROOM2: {"sessions": {"s3": key(3), "s4": key(4)}}}},
                                  token=token)
        self.assertEqual(resp.json["count"], 4)
        self.assertNotIn(resp.json["etag"], (etag1, etag2))

        resp = await self.request("GET", session_path(version=v), token=token)
        self.assertEqual((resp.code, resp.json), (200, key()))
        resp = await self.request("GET", room_path(version=v), token=token)
        self.assertEqual(resp.json, {"sessions": {"s1": key(), "s2": key(2)}})
        resp = await self.request("GET", f"{KEYS}?version={v}", token=token)
        self.assertEqual(resp.json, {"rooms": {
            ROOM: {"sessions": {"s1": key(), "s2": key(2)}},
            ROOM2: {"sessions": {"s3": key(3), "s4": key(4)}},
        }})
        info = (await self.request("GET", VERSION, token=token)).json
        self.assertEqual(info["count"], 4)

        # Empty answers, as Synapse: a room without keys, a backup without keys.
        resp = await self.request("GET", room_path("!empty:test", v), token=token)
        self.assertEqual((resp.code, resp.json), (200, {"sessions": {}}))
        resp = await self.request("GET", session_path("!empty:test", "nope", v), token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", session_path(ROOM, "nope", v), token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        v2 = await self.create(token)
        resp = await self.request("GET", f"{KEYS}?version={v2}", token=token)
        self.assertEqual((resp.code, resp.json), (200, {"rooms": {}}))
        # Keys of an older version stay readable.
        resp = await self.request("GET", session_path(version=v), token=token)
        self.assertEqual(resp.json, key())

    async def test_replacement_rules_and_etag(self) -> None:
        token = await self.user()
        v = await self.create(token)
        first = await self.request("PUT", session_path(version=v), key(5, 3, False, "orig"), token=token)
        etag = first.json["etag"]

        async def put(k: dict[str, Any]) -> dict[str, Any]:
            resp = await self.request("PUT", session_path(version=v), k, token=token)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json["count"], 1)
            return resp.json

        async def stored() -> dict[str, Any]:
            return (await self.request("GET", session_path(version=v), token=token)).json

        # Not better: kept, etag unchanged.
        for worse in (key(5, 3, False, "same"), key(6, 0, False, "later"), key(5, 4, False, "more-fwd")):
            self.assertEqual((await put(worse))["etag"], etag)
            self.assertEqual((await stored())["session_data"]["ciphertext"], "orig")
        # Lower forwarded_count wins.
        res = await put(key(5, 2, False, "less-fwd"))
        self.assertNotEqual(res["etag"], etag)
        etag = res["etag"]
        self.assertEqual(await stored(), key(5, 2, False, "less-fwd"))
        # Lower first_message_index wins even with more forwards.
        res = await put(key(4, 9, False, "earlier"))
        self.assertNotEqual(res["etag"], etag)
        etag = res["etag"]
        # Verified wins even with worse indexes.
        res = await put(key(8, 9, True, "verified"))
        self.assertNotEqual(res["etag"], etag)
        etag = res["etag"]
        self.assertEqual(await stored(), key(8, 9, True, "verified"))
        # Once verified, no unverified key replaces it, even one decrypting more.
        self.assertEqual((await put(key(0, 0, False, "unverified-earlier")))["etag"], etag)
        self.assertEqual(await stored(), key(8, 9, True, "verified"))
        # Between verified keys, a higher index never wins even with fewer forwards.
        self.assertEqual((await put(key(9, 0, True, "verified-later")))["etag"], etag)
        res = await put(key(7, 9, True, "verified-earlier"))
        self.assertNotEqual(res["etag"], etag)
        self.assertEqual(await stored(), key(7, 9, True, "verified-earlier"))
        # The version info reports the same etag as the last upload.
        info = (await self.request("GET", f"{VERSION}/{v}", token=token)).json
        self.assertEqual((info["etag"], info["count"]), (res["etag"], 1))

    async def test_delete_keys(self) -> None:
        token = await self.user()
        v = await self.create(token)
        await self.request("PUT", f"{KEYS}?version={v}", {"rooms": {
            ROOM: {"sessions": {"a": key(), "b": key()}},
            ROOM2: {"sessions": {"c": key(), "d": key()}},
        }}, token=token)
        etag = (await self.request("GET", VERSION, token=token)).json["etag"]

        resp = await self.request("DELETE", session_path(ROOM, "a", v), token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["count"], 3)
        self.assertNotEqual(resp.json["etag"], etag)
        etag = resp.json["etag"]
        # Deleting nothing changes nothing.
        resp = await self.request("DELETE", session_path(ROOM, "a", v), token=token)
        self.assertEqual(resp.json, {"count": 3, "etag": etag})
        resp = await self.request("GET", session_path(ROOM, "a", v), token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

        resp = await self.request("DELETE", room_path(ROOM2, v), token=token)
        self.assertEqual(resp.json["count"], 1)
        resp = await self.request("GET", room_path(ROOM2, v), token=token)
        self.assertEqual(resp.json, {"sessions": {}})
        resp = await self.request("DELETE", f"{KEYS}?version={v}", token=token)
        self.assertEqual(resp.json["count"], 0)
        resp = await self.request("GET", f"{KEYS}?version={v}", token=token)
        self.assertEqual(resp.json, {"rooms": {}})
        self.assertEqual((await self.request("GET", VERSION, token=token)).json["count"], 0)

    async def test_wrong_and_deleted_versions(self) -> None:
        token = await self.user()
        v1 = await self.create(token)
        await self.request("PUT", session_path(version=v1), key(), token=token)
        v2 = await self.create(token)
        # Uploads only go to the current version.
        for method, path, body in (
            ("PUT", session_path(version=v1), key()),
            ("PUT", room_path(version=v1), {"sessions": {"x": key()}}),
            ("PUT", f"{KEYS}?version={v1}", {"rooms": {ROOM: {"sessions": {"x": key()}}}}),
        ):
            resp = await self.request(method, path, body, token=token)
            self.assertMatrixError(resp, 403, "M_WRONG_ROOM_KEYS_VERSION")
            self.assertEqual(resp.json["current_version"], v2)
        resp = await self.request("PUT", session_path(version="987654"), key(), token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

        # Deleting a version deletes its keys; they are gone for good.
        resp = await self.request("DELETE", f"{VERSION}/{v1}", token=token)
        self.assertEqual(resp.code, 200, resp)
        for method in ("GET", "DELETE"):
            resp = await self.request(method, session_path(version=v1), token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("PUT", session_path(version=v1), key(), token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

        # With no version left at all, an upload is a 404.
        await self.request("DELETE", f"{VERSION}/{v2}", token=token)
        resp = await self.request("PUT", session_path(version=v2), key(), token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", VERSION, token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_other_users_backups_are_invisible(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        v = await self.create(alice)
        await self.request("PUT", session_path(version=v), key(), token=alice)
        resp = await self.request("GET", VERSION, token=bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        for method in ("GET", "DELETE"):
            for path in (f"{VERSION}/{v}", session_path(version=v), room_path(version=v),
                         f"{KEYS}?version={v}"):
                resp = await self.request(method, path, token=bob)
                self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("PUT", session_path(version=v), key(9, 9, False, "evil"), token=bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("PUT", f"{VERSION}/{v}",
                                  {"algorithm": ALG, "auth_data": {"public_key": "x"}}, token=bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Bob's own backup numbering is his own, and does not touch Alice's.
        bv = await self.create(bob)
        self.assertEqual(bv, "1")
        await self.request("PUT", session_path(version=bv), key(0, 0, True, "bob"), token=bob)
        resp = await self.request("GET", session_path(version=v), token=alice)
        self.assertEqual(resp.json, key())
        self.assertEqual((await self.request("GET", VERSION, token=alice)).json["auth_data"], AUTH_DATA)

    async def test_bad_key_bodies_are_400(self) -> None:
        token = await self.user()
        v = await self.create(token)
        bad_keys: list[tuple[Any, str]] = [
            ({}, "M_MISSING_PARAM"),
            ({**key(), "is_verified": "yes"}, "M_BAD_JSON"),
            ({**key(), "is_verified": 1}, "M_BAD_JSON"),
            ({**key(), "first_message_index": "1"}, "M_BAD_JSON"),
            ({**key(), "first_message_index": 1.5}, "M_BAD_JSON"),
            ({**key(), "forwarded_count": True}, "M_BAD_JSON"),
            ({**key(), "forwarded_count": -1}, "M_INVALID_PARAM"),
            ({**key(), "first_message_index": 10**30}, "M_INVALID_PARAM"),
            ({**key(), "session_data": "opaque"}, "M_BAD_JSON"),
            ({k: val for k, val in key().items() if k != "session_data"}, "M_MISSING_PARAM"),
        ]
        for body, errcode in bad_keys:
            resp = await self.request("PUT", session_path(version=v), body, token=token)
            self.assertMatrixError(resp, 400, errcode)
            resp = await self.request("PUT", room_path(version=v), {"sessions": {"s": body}}, token=token)
            self.assertMatrixError(resp, 400, errcode)
            resp = await self.request("PUT", f"{KEYS}?version={v}",
                                      {"rooms": {ROOM: {"sessions": {"s": body}}}}, token=token)
            self.assertMatrixError(resp, 400, errcode)
        for path, body in ((room_path(version=v), {}), (room_path(version=v), {"sessions": []}),
                           (f"{KEYS}?version={v}", {}), (f"{KEYS}?version={v}", {"rooms": {ROOM: {}}}),
                           (f"{KEYS}?version={v}", {"rooms": {ROOM: []}})):
            resp = await self.request("PUT", path, body, token=token)
            self.assertEqual(resp.code, 400, resp)
            self.assertIn(resp.json["errcode"], ("M_BAD_JSON", "M_MISSING_PARAM"))
        for path in (session_path(version=v), room_path(version=v), f"{KEYS}?version={v}"):
            resp = await self.request("PUT", path, raw_body=b"{\"rooms\":", token=token)
            self.assertMatrixError(resp, 400, "M_NOT_JSON")
            resp = await self.request("PUT", path, ["x"], token=token)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        # Oversized blobs and IDs.
        resp = await self.request("PUT", session_path(version=v), key(data="x" * 20000), token=token)
        self.assertMatrixError(resp, 400, "M_TOO_LARGE")
        resp = await self.request("PUT", session_path(session="s" * 300, version=v), key(), token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", f"{KEYS}?version={v}", {"rooms": {"r" * 300: {"sessions": {}}}},
                                  token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # Nothing was stored by any of the above.
        resp = await self.request("GET", f"{KEYS}?version={v}", token=token)
        self.assertEqual(resp.json, {"rooms": {}})
        # An integral float is accepted and stored as an integer.
        resp = await self.request("PUT", session_path(version=v), {**key(), "first_message_index": 2.0},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", session_path(version=v), token=token)
        self.assertEqual(resp.raw.count(b'"first_message_index":2,'), 1, resp)

    async def test_version_query_param_required(self) -> None:
        token = await self.user()
        await self.create(token)
        for method, path, body in (
            ("GET", f"{KEYS}", None), ("DELETE", f"{KEYS}", None),
            ("PUT", f"{KEYS}", {"rooms": {}}),
            ("GET", f"{KEYS}/{quote(ROOM)}", None), ("PUT", f"{KEYS}/{quote(ROOM)}", {"sessions": {}}),
            ("GET", f"{KEYS}/{quote(ROOM)}/s", None), ("PUT", f"{KEYS}/{quote(ROOM)}/s", key()),
        ):
            resp = await self.request(method, path, body, token=token)
            self.assertMatrixError(resp, 400, "M_MISSING_PARAM")

    async def test_concurrent_uploads_of_one_session(self) -> None:
        """Several devices back up the same new session at once: no 500, one row, best kept."""
        token = await self.user()
        v = await self.create(token)
        uploads = [self.request("PUT", session_path(version=v), key(i % 5, i, False, f"d{i}"), token=token)
                   for i in range(10)]
        results = await defer.gatherResults([defer.ensureDeferred(u) for u in uploads])
        self.assertEqual([r.code for r in results], [200] * 10, results)
        resp = await self.request("GET", session_path(version=v), token=token)
        self.assertEqual(resp.json["first_message_index"], 0)
        self.assertEqual(resp.json["forwarded_count"], 0)
        self.assertEqual((await self.request("GET", VERSION, token=token)).json["count"], 1)

    async def test_concurrent_first_creates(self) -> None:
        token = await self.user()
        body = {"algorithm": ALG, "auth_data": AUTH_DATA}
        results = await defer.gatherResults([
            defer.ensureDeferred(self.request("POST", VERSION, body, token=token)) for _ in range(5)
        ])
        self.assertEqual([r.code for r in results], [200] * 5, results)
        self.assertEqual(sorted(int(r.json["version"]) for r in results), [1, 2, 3, 4, 5])

    async def test_empty_upload_keeps_etag(self) -> None:
        token = await self.user()
        v = await self.create(token)
        before = (await self.request("GET", VERSION, token=token)).json["etag"]
        resp = await self.request("PUT", f"{KEYS}?version={v}", {"rooms": {}}, token=token)
        self.assertEqual(resp.json, {"etag": before, "count": 0})

    async def test_no_token_is_401(self) -> None:
        for method, path, body in (
            ("GET", VERSION, None), ("POST", VERSION, {"algorithm": ALG, "auth_data": AUTH_DATA}),
            ("GET", f"{VERSION}/1", None),
            ("PUT", f"{VERSION}/1", {"algorithm": ALG, "auth_data": AUTH_DATA}),
            ("DELETE", f"{VERSION}/1", None),
            ("GET", f"{KEYS}?version=1", None), ("PUT", f"{KEYS}?version=1", {"rooms": {}}),
            ("DELETE", f"{KEYS}?version=1", None),
            ("GET", room_path(), None), ("PUT", room_path(), {"sessions": {}}), ("DELETE", room_path(), None),
            ("GET", session_path(), None), ("PUT", session_path(), key()), ("DELETE", session_path(), None),
        ):
            resp = await self.request(method, path, body)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
