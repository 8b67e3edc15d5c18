"""Custom profile fields (spec v1.16): GET/PUT/DELETE /profile/{userId}/{keyName}."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from homeserver.handlers.profile import MAX_PROFILE_BYTES, profile_size
from tests.harness import TEST_PASSWORD, HomeserverTestCase

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"


def path(user_id: str, key: str = "", version: str = "v3") -> str:
    suffix = f"/{quote(key, safe='')}" if key else ""
    return f"/_matrix/client/{version}/profile/{quote(user_id, safe='')}{suffix}"


def canonical_size(profile: dict[str, Any]) -> int:
    """Independent of the code under test: canonical JSON as the spec defines it."""
    return len(json.dumps(profile, sort_keys=True, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8"))


class ProfileFieldsTest(HomeserverTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def put(self, key: str, value: Any, token: str | None = None,
                  user: str = ALICE) -> Any:
        return await self.request("PUT", path(user, key), {key: value},
                                  token=self.alice if token is None else token)

    async def assert_profile(self, expected: dict[str, Any], user: str = ALICE) -> None:
        resp = await self.request("GET", path(user))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, expected)

    # --- success --------------------------------------------------------------------

    async def test_set_get_any_json_value(self) -> None:
        values = {
            "org.example.text": "Ünïcode 🐇 <b>not html</b>",
            "org.example.object": {"nested": {"list": [1, "two", None, True]}, "n": -5},
            "org.example.list": ["a", {"b": []}],
            "org.example.int": 9007199254740991,
            "org.example.float": 1.5,
            "org.example.bool": False,
            "org.example.empty": "",
            "com.example-dashed_name.x": {},
            "single": "no namespace: allowed by the identifier grammar",
        }
        for key, value in values.items():
            resp = await self.put(key, value)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json, {})
        for key, value in values.items():
            resp = await self.request("GET", path(ALICE, key))  # no token needed
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json, {key: value})
        await self.assert_profile({"displayname": "alice", **values})
        await self.assert_profile({"displayname": "bob"}, user=BOB)

    async def test_overwrite_replaces_value(self) -> None:
        await self.put("org.example.pronouns", ["she", "her"])
        resp = await self.put("org.example.pronouns", {"en": "they/them"})
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", path(ALICE, "org.example.pronouns"), token=self.bob)
        self.assertEqual(resp.json, {"org.example.pronouns": {"en": "they/them"}})

    async def test_timezone(self) -> None:
        for tz in ("Europe/London", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "UTC",
                   "EST5EDT", "America/Port-au-Prince"):
            resp = await self.put("m.tz", tz)
            self.assertEqual(resp.code, 200, resp)
            resp = await self.request("GET", path(ALICE, "m.tz"))
            self.assertEqual(resp.json, {"m.tz": tz})
        await self.assert_profile({"displayname": "alice", "m.tz": "America/Port-au-Prince"})

    async def test_timezone_bad_values(self) -> None:
        cases = [
            (None, "M_BAD_JSON"),
            (5, "M_BAD_JSON"),
            (["Europe/London"], "M_BAD_JSON"),
            ("", "M_INVALID_PARAM"),
            ("Europe/<script>", "M_INVALID_PARAM"),
            ("Europe//London", "M_INVALID_PARAM"),
            ("/Europe/London", "M_INVALID_PARAM"),
            ("Europe London", "M_INVALID_PARAM"),
            ("Europe/London\n", "M_INVALID_PARAM"),
            ("A" * 256, "M_INVALID_PARAM"),
        ]
        for value, errcode in cases:
            resp = await self.put("m.tz", value)
            self.assertMatrixError(resp, 400, errcode)
        resp = await self.request("GET", path(ALICE, "m.tz"))
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_displayname_and_avatar_via_generic_rules(self) -> None:
        mxc = "mxc://test.local/abc"
        self.assertEqual((await self.put("avatar_url", mxc)).code, 200)
        self.assertEqual((await self.put("displayname", "Alice")).code, 200)
        await self.put("org.example.x", 1)
        await self.assert_profile({"displayname": "Alice", "avatar_url": mxc, "org.example.x": 1})
        # Their own rules still apply on the generic path.
        self.assertMatrixError(await self.put("avatar_url", "https://x.example/a.png"),
                               400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.put("displayname", {"a": 1}), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.put("displayname", "x" * 257), 400, "M_INVALID_PARAM")

    # --- DELETE ---------------------------------------------------------------------

    async def test_delete_custom_field(self) -> None:
        await self.put("org.example.a", "A")
        await self.put("org.example.b", "B")
        resp = await self.request("DELETE", path(ALICE, "org.example.a"), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})
        resp = await self.request("GET", path(ALICE, "org.example.a"))
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        await self.assert_profile({"displayname": "alice", "org.example.b": "B"})
        # Deleting what is not there succeeds (spec: "deleted or it doesn't exist").
        resp = await self.request("DELETE", path(ALICE, "org.example.a"), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("DELETE", path(ALICE, "m.tz"), token=self.alice)
        self.assertEqual(resp.code, 200, resp)

    async def test_delete_displayname_and_avatar_clears_them(self) -> None:
        await self.put("avatar_url", "mxc://test.local/abc")
        for key in ("displayname", "avatar_url"):
            resp = await self.request("DELETE", path(ALICE, key), token=self.alice)
            self.assertEqual(resp.code, 200, resp)
            resp = await self.request("GET", path(ALICE, key))
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        await self.assert_profile({})
        profile = await self.hs.stores.profiles.get_profile(ALICE)
        self.assertIsNone(profile.displayname)
        self.assertIsNone(profile.avatar_url)

    # --- key names ------------------------------------------------------------------

    async def test_invalid_key_names(self) -> None:
        for key in ("Org.example.x", "1abc", "_x", ".x", "-x", "m.tz!", "a b", "org.ex/ample",
                    "é.x", "org.example.é", "a:b", "a\tb", "org.example.x\n"):
            resp = await self.put(key, "v")
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
            resp = await self.request("GET", path(ALICE, key))
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
            resp = await self.request("DELETE", path(ALICE, key), token=self.alice)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        await self.assert_profile({"displayname": "alice"})

    async def test_key_length_limit(self) -> None:
        longest = "a" * 255
        resp = await self.put(longest, "fits")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", path(ALICE, longest))
        self.assertEqual(resp.json, {longest: "fits"})
        # 256 bytes: too long, whether ASCII or not (é is two bytes in UTF-8).
        for key in ("a" * 256, "é" * 128, "a" + "é" * 200):
            resp = await self.put(key, "v")
            self.assertMatrixError(resp, 400, "M_KEY_TOO_LARGE")
            resp = await self.request("GET", path(ALICE, key))
            self.assertMatrixError(resp, 400, "M_KEY_TOO_LARGE")
            resp = await self.request("DELETE", path(ALICE, key), token=self.alice)
            self.assertMatrixError(resp, 400, "M_KEY_TOO_LARGE")

    # --- bodies ---------------------------------------------------------------------

    async def test_put_body_must_be_exactly_the_key(self) -> None:
        key = "org.example.x"
        cases = [
            ({}, "M_MISSING_PARAM"),
            ({"org.example.y": 1}, "M_MISSING_PARAM"),
            ({key: 1, "org.example.y": 2}, "M_BAD_JSON"),
            ({key: None}, "M_INVALID_PARAM"),
        ]
        for body, errcode in cases:
            resp = await self.request("PUT", path(ALICE, key), body, token=self.alice)
            self.assertMatrixError(resp, 400, errcode)
        for known in ("displayname", "avatar_url", "m.tz"):
            value = {"displayname": "A", "avatar_url": "", "m.tz": "UTC"}[known]
            resp = await self.request("PUT", path(ALICE, known), {known: value, "extra": 1},
                                      token=self.alice)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
            resp = await self.request("PUT", path(ALICE, known), {"extra": 1}, token=self.alice)
            self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        await self.assert_profile({"displayname": "alice"})

    async def test_put_body_not_json_or_not_object(self) -> None:
        p = path(ALICE, "org.example.x")
        self.assertMatrixError(await self.request("PUT", p, raw_body=b"{nope", token=self.alice),
                               400, "M_NOT_JSON")
        self.assertMatrixError(await self.request("PUT", p, raw_body=b"[1]", token=self.alice),
                               400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("PUT", p, raw_body=b"", token=self.alice),
                               400, "M_MISSING_PARAM")
        for raw in (b'{"org.example.x": 1e400}', b'{"org.example.x": [{"a": -1e999}]}'):
            resp = await self.request("PUT", p, raw_body=raw, token=self.alice)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        for raw in (b'{"org.example.x": "nul\\u0000"}', b'{"org.example.x": {"\\ud800": 1}}'):
            resp = await self.request("PUT", p, raw_body=raw, token=self.alice)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        await self.assert_profile({"displayname": "alice"})

    # --- who may do what ------------------------------------------------------------

    async def test_unset_or_unknown_key_is_404(self) -> None:
        for key in ("org.example.never", "m.tz", "avatar_url", "m.unknown"):
            resp = await self.request("GET", path(ALICE, key), token=self.bob)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_writes_need_token(self) -> None:
        resp = await self.request("PUT", path(ALICE, "org.example.x"), {"org.example.x": 1})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("DELETE", path(ALICE, "displayname"))
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        await self.assert_profile({"displayname": "alice"})

    async def test_cannot_change_other_users_fields(self) -> None:
        await self.put("org.example.x", "mine")
        resp = await self.put("org.example.x", "yours", token=self.bob)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.put("m.tz", "UTC", token=self.bob)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for key in ("org.example.x", "displayname"):
            resp = await self.request("DELETE", path(ALICE, key), token=self.bob)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for target in ("@nobody:test.local", "@alice:elsewhere.example"):
            resp = await self.put("org.example.x", 1, token=self.alice, user=target)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            resp = await self.request("DELETE", path(target, "org.example.x"), token=self.alice)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.assert_profile({"displayname": "alice", "org.example.x": "mine"})

    async def test_unknown_and_remote_users_are_404(self) -> None:
        for user in ("@nobody:test.local", "@alice:elsewhere.example"):
            for key in ("org.example.x", "m.tz", "displayname"):
                resp = await self.request("GET", path(user, key), token=self.alice)
                self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_malformed_user_id_is_400(self) -> None:
        resp = await self.request("GET", path("alice", "org.example.x"))
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_r0_only_serves_the_legacy_fields(self) -> None:
        await self.put("org.example.x", 1)
        resp = await self.request("GET", path(ALICE, "org.example.x", "r0"))
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        resp = await self.request("PUT", path(ALICE, "org.example.x", "r0"), {"org.example.x": 2},
                                  token=self.alice)
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        resp = await self.request("DELETE", path(ALICE, "displayname", "r0"), token=self.alice)
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")
        resp = await self.request("PUT", path(ALICE, "avatar_url", "r0"),
                                  {"avatar_url": "https://x.example/"}, token=self.alice)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # The full profile on r0 does show custom fields (it is the same endpoint).
        resp = await self.request("GET", path(ALICE, "", "r0"))
        self.assertEqual(resp.json, {"displayname": "alice", "org.example.x": 1})

    # --- size limit -----------------------------------------------------------------

    async def _fill_to(self, total: int, key: str = "org.example.big") -> None:
        """Make Alice's profile exactly ``total`` bytes of canonical JSON."""
        base = canonical_size({"displayname": "alice", key: ""})
        resp = await self.put(key, "x" * (total - base))
        self.assertEqual(resp.code, 200, resp)
        profile = (await self.request("GET", path(ALICE))).json
        self.assertEqual(canonical_size(profile), total)
        self.assertEqual(profile_size(profile), total)

    async def test_profile_size_limit_is_64_kib(self) -> None:
        self.assertEqual(MAX_PROFILE_BYTES, 65536)
        await self._fill_to(MAX_PROFILE_BYTES)  # exactly 64 KiB is allowed
        big = (await self.request("GET", path(ALICE, "org.example.big"))).json["org.example.big"]
        # One byte more, by any route, is refused and changes nothing.
        self.assertMatrixError(await self.put("org.example.big", big + "x"),
                               400, "M_PROFILE_TOO_LARGE")
        self.assertMatrixError(await self.put("displayname", "alicex"), 400, "M_PROFILE_TOO_LARGE")
        self.assertMatrixError(await self.put("avatar_url", "mxc://t/a"), 400, "M_PROFILE_TOO_LARGE")
        self.assertMatrixError(await self.put("m.tz", "UTC"), 400, "M_PROFILE_TOO_LARGE")
        self.assertMatrixError(await self.put("a", 1), 400, "M_PROFILE_TOO_LARGE")
        resp = await self.request("PUT", path(ALICE, "displayname", "r0"), {"displayname": "alicex"},
                                  token=self.alice)
        self.assertMatrixError(resp, 400, "M_PROFILE_TOO_LARGE")
        profile = (await self.request("GET", path(ALICE))).json
        self.assertEqual(profile, {"displayname": "alice", "org.example.big": big})
        # Replacing a value with one no larger, shrinking, clearing, deleting: all fine.
        self.assertEqual((await self.put("org.example.big", "y" * len(big))).code, 200)
        self.assertEqual((await self.put("displayname", "alicE")).code, 200)
        self.assertEqual((await self.put("displayname", "")).code, 200)
        self.assertEqual((await self.put("m.tz", "UTC")).code, 200)
        resp = await self.request("DELETE", path(ALICE, "org.example.big"), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        await self.assert_profile({"m.tz": "UTC"})

    async def test_profile_size_counts_utf8_bytes(self) -> None:
        base = canonical_size({"displayname": "alice", "org.example.big": ""})
        # Fewer characters than the limit, but more bytes (é is two bytes).
        chars = (MAX_PROFILE_BYTES - base) // 2 + 1
        resp = await self.put("org.example.big", "é" * chars)
        self.assertMatrixError(resp, 400, "M_PROFILE_TOO_LARGE")
        resp = await self.put("org.example.big", "é" * (chars - 1))
        self.assertEqual(resp.code, 200, resp)

    async def test_concurrent_writes_cannot_both_pass_the_size_check(self) -> None:
        # Room for one more 20-byte-ish field but not two: sent at once, one must fail.
        await self._fill_to(MAX_PROFILE_BYTES - 40)
        results = await defer.gatherResults([
            defer.ensureDeferred(self.put("org.example.p", "x" * 15)),
            defer.ensureDeferred(self.put("org.example.q", "y" * 15)),
        ])
        codes = sorted(r.code for r in results)
        self.assertEqual(codes, [200, 400], results)
        profile = (await self.request("GET", path(ALICE))).json
        self.assertLessEqual(canonical_size(profile), MAX_PROFILE_BYTES)

    # --- deactivation ---------------------------------------------------------------

    async def _deactivate_bob(self, erase: bool) -> None:
        first = await self.request("POST", DEACTIVATE, {"erase": erase}, token=self.bob)
        self.assertEqual(first.code, 401, first)
        done = await self.request("POST", DEACTIVATE, {"erase": erase, "auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": TEST_PASSWORD}},
            token=self.bob)
        self.assertEqual(done.code, 200, done)

    async def _give_bob_a_profile(self) -> None:
        for key, value in (("org.example.job", "Builder"), ("m.tz", "Europe/Paris"),
                           ("avatar_url", "mxc://test.local/bob")):
            self.assertEqual((await self.put(key, value, token=self.bob, user=BOB)).code, 200)

    async def test_deactivation_with_erase_clears_custom_fields(self) -> None:
        await self._give_bob_a_profile()
        await self.put("org.example.job", "Engineer")  # Alice's must survive
        await self._deactivate_bob(erase=True)
        self.assertIsNone(await self.hs.stores.profiles.get_active_profile_fields(BOB))
        stored = await self.hs.stores.profiles.get_profile(BOB)
        self.assertEqual((stored.displayname, stored.avatar_url), (None, None))
        self.assertEqual(await self._stored_fields(BOB), {})
        for key in ("", "org.example.job", "m.tz"):
            resp = await self.request("GET", path(BOB, key), token=self.alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertEqual(await self._stored_fields(ALICE), {"org.example.job": "Engineer"})

    async def test_deactivation_without_erase_hides_but_keeps_fields(self) -> None:
        await self._give_bob_a_profile()
        await self._deactivate_bob(erase=False)
        for key in ("", "org.example.job", "m.tz"):
            resp = await self.request("GET", path(BOB, key), token=self.alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertEqual(await self._stored_fields(BOB),
                         {"org.example.job": "Builder", "m.tz": "Europe/Paris"})

    async def _stored_fields(self, user_id: str) -> dict[str, Any]:
        rows = await self.hs.db.query(
            "test_fields", "SELECT field_name, value FROM profile_fields WHERE user_id = ?", user_id)
        return {name: json.loads(value) for name, value in rows}


class GuestProfileFieldsTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"registration": {"allow_guests": True}}

    async def test_guest_may_only_change_displayname(self) -> None:
        reg = await self.request("POST", "/_matrix/client/v3/register?kind=guest", {})
        self.assertEqual(reg.code, 200, reg)
        guest, token = reg.json["user_id"], reg.json["access_token"]
        resp = await self.request("PUT", path(guest, "displayname"), {"displayname": "Visitor"},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        for key, value in (("avatar_url", "mxc://test.local/a"), ("m.tz", "UTC"),
                           ("org.example.x", 1)):
            resp = await self.request("PUT", path(guest, key), {key: value}, token=token)
            self.assertMatrixError(resp, 403, "M_GUEST_ACCESS_FORBIDDEN")
            resp = await self.request("DELETE", path(guest, key), token=token)
            self.assertMatrixError(resp, 403, "M_GUEST_ACCESS_FORBIDDEN")
        resp = await self.request("GET", path(guest, "displayname"), token=token)
        self.assertEqual(resp.json, {"displayname": "Visitor"})
        resp = await self.request("DELETE", path(guest, "displayname"), token=token)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", path(guest), token=token)
        self.assertEqual(resp.json, {})
