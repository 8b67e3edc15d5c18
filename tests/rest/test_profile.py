"""GET /profile/{userId}, GET/PUT /profile/{userId}/displayname and /avatar_url.

Custom fields (spec v1.16) are tested in test_profile_fields.py.
"""

from __future__ import annotations

from urllib.parse import quote

from tests.harness import TEST_PASSWORD, HomeserverTestCase

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def profile_path(user_id: str, field: str = "", version: str = "v3") -> str:
    suffix = f"/{field}" if field else ""
    return f"/_matrix/client/{version}/profile/{quote(user_id, safe='')}{suffix}"


class ProfileTest(HomeserverTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def test_new_user_profile_defaults(self) -> None:
        # Like Synapse: the display name starts as the localpart, no avatar.
        resp = await self.request("GET", profile_path(ALICE), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"displayname": "alice"})
        resp = await self.request("GET", profile_path(ALICE, "avatar_url"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_set_and_get_displayname(self) -> None:
        resp = await self.request("PUT", profile_path(ALICE, "displayname"),
                                  {"displayname": "Alice Ünïcode 🐇"}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})
        resp = await self.request("GET", profile_path(ALICE, "displayname"), token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"displayname": "Alice Ünïcode 🐇"})
        resp = await self.request("GET", profile_path(ALICE), token=self.bob)
        self.assertEqual(resp.json, {"displayname": "Alice Ünïcode 🐇"})
        # Bob's profile is untouched.
        resp = await self.request("GET", profile_path(BOB), token=self.bob)
        self.assertEqual(resp.json, {"displayname": "bob"})

    async def test_set_and_get_avatar_url(self) -> None:
        mxc = "mxc://test.local/AbC_123-xyz"
        resp = await self.request("PUT", profile_path(ALICE, "avatar_url"),
                                  {"avatar_url": mxc}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", profile_path(ALICE, "avatar_url"), token=self.alice)
        self.assertEqual(resp.json, {"avatar_url": mxc})
        await self.request("PUT", profile_path(ALICE, "displayname"), {"displayname": "A"},
                           token=self.alice)
        resp = await self.request("GET", profile_path(ALICE), token=self.alice)
        self.assertEqual(resp.json, {"avatar_url": mxc, "displayname": "A"})

    async def test_empty_string_clears_field(self) -> None:
        await self.request("PUT", profile_path(ALICE, "displayname"), {"displayname": "A"},
                           token=self.alice)
        await self.request("PUT", profile_path(ALICE, "avatar_url"),
                           {"avatar_url": "mxc://test.local/abc"}, token=self.alice)
        for field in ("displayname", "avatar_url"):
            resp = await self.request("PUT", profile_path(ALICE, field), {field: ""},
                                      token=self.alice)
            self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", profile_path(ALICE), token=self.alice)
        self.assertEqual(resp.json, {})
        profile = await self.hs.stores.profiles.get_profile(ALICE)
        self.assertIsNone(profile.displayname)
        self.assertIsNone(profile.avatar_url)

    async def test_r0_paths(self) -> None:
        resp = await self.request("PUT", profile_path(ALICE, "displayname", "r0"),
                                  {"displayname": "Old client"}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", profile_path(ALICE, "", "r0"))
        self.assertEqual(resp.json, {"displayname": "Old client"})

    async def test_unencoded_user_id_in_path(self) -> None:
        await self.request("PUT", profile_path(ALICE, "displayname"), {"displayname": "A"},
                           token=self.alice)
        resp = await self.request("GET", f"/_matrix/client/v3/profile/{ALICE}/displayname")
        self.assertEqual(resp.json, {"displayname": "A"})

    async def test_reads_need_no_token(self) -> None:
        await self.request("PUT", profile_path(ALICE, "displayname"), {"displayname": "A"},
                           token=self.alice)
        resp = await self.request("GET", profile_path(ALICE))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"displayname": "A"})
        resp = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertEqual(resp.json, {"displayname": "A"})

    async def test_bad_token_on_read_is_still_rejected(self) -> None:
        resp = await self.request("GET", profile_path(ALICE), token="not-a-token")
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_writes_need_token(self) -> None:
        for field, value in (("displayname", "A"), ("avatar_url", "mxc://test.local/a")):
            resp = await self.request("PUT", profile_path(ALICE, field), {field: value})
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        self.assertEqual((await self.hs.stores.profiles.get_profile(ALICE)).displayname, "alice")

    async def test_cannot_set_other_users_profile(self) -> None:
        for field, value in (("displayname", "Mallory"), ("avatar_url", "mxc://test.local/m")):
            resp = await self.request("PUT", profile_path(ALICE, field), {field: value},
                                      token=self.bob)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        profile = await self.hs.stores.profiles.get_profile(ALICE)
        self.assertEqual(profile.displayname, "alice")
        self.assertIsNone(profile.avatar_url)

    async def test_put_for_unknown_or_remote_user_is_forbidden(self) -> None:
        for target in ("@nobody:test.local", "@alice:elsewhere.example"):
            resp = await self.request("PUT", profile_path(target, "displayname"),
                                      {"displayname": "x"}, token=self.alice)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_unknown_user_is_404(self) -> None:
        for path in (profile_path("@nobody:test.local"),
                     profile_path("@nobody:test.local", "displayname"),
                     profile_path("@nobody:test.local", "avatar_url")):
            resp = await self.request("GET", path, token=self.alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_remote_user_is_404(self) -> None:
        resp = await self.request("GET", profile_path("@alice:elsewhere.example"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_malformed_user_id_is_400(self) -> None:
        for bad in ("alice", "@alice", "@:test.local", "@alice:", "@al\x00ice:test.local",
                    "@al\nice:test.local"):
            resp = await self.request("GET", profile_path(bad), token=self.alice)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_deactivated_user_is_404(self) -> None:
        await self.request("PUT", profile_path(BOB, "displayname"), {"displayname": "Bob"},
                           token=self.bob)
        path = "/_matrix/client/v3/account/deactivate"
        first = await self.request("POST", path, {}, token=self.bob)
        self.assertEqual(first.code, 401, first)
        done = await self.request("POST", path, {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": TEST_PASSWORD}},
            token=self.bob)
        self.assertEqual(done.code, 200, done)
        # The name is still stored (no erase), but the profile is no longer served.
        self.assertEqual((await self.hs.stores.profiles.get_profile(BOB)).displayname, "Bob")
        for field in ("", "displayname"):
            resp = await self.request("GET", profile_path(BOB, field), token=self.alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_displayname_bad_input(self) -> None:
        path = profile_path(ALICE, "displayname")
        cases = [
            ({}, "M_MISSING_PARAM"),
            ({"avatar_url": "mxc://test.local/a"}, "M_MISSING_PARAM"),
            ({"displayname": None}, "M_BAD_JSON"),
            ({"displayname": 5}, "M_BAD_JSON"),
            ({"displayname": ["A"]}, "M_BAD_JSON"),
            ({"displayname": "x" * 257}, "M_INVALID_PARAM"),
            ({"displayname": "nul\x00byte"}, "M_BAD_JSON"),  # refused by the HTTP layer
        ]
        for body, errcode in cases:
            resp = await self.request("PUT", path, body, token=self.alice)
            self.assertMatrixError(resp, 400, errcode)
        self.assertEqual((await self.hs.stores.profiles.get_profile(ALICE)).displayname, "alice")

    async def test_displayname_length_limit_is_inclusive(self) -> None:
        name = "é" * 256
        resp = await self.request("PUT", profile_path(ALICE, "displayname"),
                                  {"displayname": name}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertEqual(resp.json, {"displayname": name})

    async def test_lone_surrogate_is_rejected(self) -> None:
        resp = await self.request("PUT", profile_path(ALICE, "displayname"),
                                  raw_body=b'{"displayname": "a\\ud800b"}', token=self.alice)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_invalid_json_body(self) -> None:
        path = profile_path(ALICE, "displayname")
        resp = await self.request("PUT", path, raw_body=b"{nope", token=self.alice)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        resp = await self.request("PUT", path, raw_body=b'["displayname"]', token=self.alice)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_avatar_url_bad_input(self) -> None:
        path = profile_path(ALICE, "avatar_url")
        cases = [
            ({}, "M_MISSING_PARAM"),
            ({"avatar_url": None}, "M_BAD_JSON"),
            ({"avatar_url": 1}, "M_BAD_JSON"),
            ({"avatar_url": {"url": "mxc://test.local/a"}}, "M_BAD_JSON"),
            ({"avatar_url": "https://evil.example/track.png"}, "M_INVALID_PARAM"),
            ({"avatar_url": "mxc://test.local/"}, "M_INVALID_PARAM"),
            ({"avatar_url": "mxc://test.local/a/b"}, "M_INVALID_PARAM"),
            ({"avatar_url": "mxc:///abc"}, "M_INVALID_PARAM"),
            ({"avatar_url": "mxc://test.local/abc\n"}, "M_INVALID_PARAM"),
            ({"avatar_url": "mxc://test.local/" + "a" * 1000}, "M_INVALID_PARAM"),
        ]
        for body, errcode in cases:
            resp = await self.request("PUT", path, body, token=self.alice)
            self.assertMatrixError(resp, 400, errcode)
        self.assertIsNone((await self.hs.stores.profiles.get_profile(ALICE)).avatar_url)

    async def test_unset_profile_field_is_not_found(self) -> None:
        # Since v1.16 any key name is an endpoint (tests/rest/test_profile_fields.py).
        resp = await self.request("GET", profile_path(ALICE, "m.tz"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_wrong_method(self) -> None:
        resp = await self.request("PUT", profile_path(ALICE), {}, token=self.alice)
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")
