"""OpenID: request_token (client-server) and /openid/userinfo (federation)."""

from __future__ import annotations

import hashlib
from urllib.parse import quote, urlencode

from tests.harness import TEST_PASSWORD, HomeserverTestCase

USERINFO = "/_matrix/federation/v1/openid/userinfo"


def request_token_path(user_id: str, version: str = "v3") -> str:
    return f"/_matrix/client/{version}/user/{quote(user_id, safe='')}/openid/request_token"


def userinfo(token: str) -> str:
    return USERINFO + "?" + urlencode({"access_token": token})


class OpenIdTest(HomeserverTestCase):
    async def asyncSetUpUser(self, name: str = "olga") -> dict:  # noqa: N802
        return await self.register(name)

    async def _issue(self, reg: dict, user_id: str = "@olga:test.local") -> str:
        resp = await self.request("POST", request_token_path(user_id), {},
                                  token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        return resp.json["access_token"]

    async def test_request_token_and_exchange(self) -> None:
        reg = await self.asyncSetUpUser()
        resp = await self.request("POST", request_token_path("@olga:test.local"), {},
                                  token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(set(resp.json),
                         {"access_token", "token_type", "matrix_server_name", "expires_in"})
        self.assertEqual(resp.json["token_type"], "Bearer")
        self.assertEqual(resp.json["matrix_server_name"], "test.local")
        self.assertEqual(resp.json["expires_in"], 3600)
        token = resp.json["access_token"]
        self.assertGreaterEqual(len(token), 32)
        info = await self.request("GET", userinfo(token))
        self.assertEqual(info.code, 200, info)
        self.assertEqual(info.json, {"sub": "@olga:test.local"})

    async def test_each_request_gives_a_new_token(self) -> None:
        reg = await self.asyncSetUpUser()
        first, second = await self._issue(reg), await self._issue(reg)
        self.assertNotEqual(first, second)
        for token in (first, second):
            self.assertEqual((await self.request("GET", userinfo(token))).json,
                             {"sub": "@olga:test.local"})

    async def test_r0_path_and_empty_body(self) -> None:
        reg = await self.asyncSetUpUser()
        resp = await self.request("POST", request_token_path("@olga:test.local", "r0"),
                                  raw_body=b"", token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", request_token_path("@olga:test.local"),
                                  {"future": "field"}, token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)

    async def test_only_for_yourself(self) -> None:
        reg = await self.asyncSetUpUser()
        await self.register("pete")
        for other in ("@pete:test.local", "@nobody:test.local", "@olga:elsewhere.org", "olga"):
            resp = await self.request("POST", request_token_path(other), {},
                                      token=reg["access_token"])
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertEqual(await self.hs.stores.openid_tokens.count_tokens(), 0)

    async def test_request_token_needs_auth_and_json_object(self) -> None:
        reg = await self.asyncSetUpUser()
        path = request_token_path("@olga:test.local")
        self.assertMatrixError(await self.request("POST", path, {}), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("POST", path, {}, token="bogus"), 401,
                               "M_UNKNOWN_TOKEN")
        self.assertMatrixError(await self.request("POST", path, raw_body=b"{x",
                                                  token=reg["access_token"]), 400, "M_NOT_JSON")
        self.assertMatrixError(await self.request("POST", path, raw_body=b"[]",
                                                  token=reg["access_token"]), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("GET", path, token=reg["access_token"]),
                               405, "M_UNRECOGNIZED")

    async def test_userinfo_errors(self) -> None:
        resp = await self.request("GET", USERINFO)
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", USERINFO + "?access_token=")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", userinfo("no-such-token"))
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_tokens_are_not_interchangeable(self) -> None:
        reg = await self.asyncSetUpUser()
        token = await self._issue(reg)
        # The OpenID token is not a client-server access token...
        resp = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
        # ... and the access token is not an OpenID token, in the query or a header.
        resp = await self.request("GET", userinfo(reg["access_token"]))
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
        resp = await self.request("GET", USERINFO, token=reg["access_token"])
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", USERINFO, token=token)
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_token_expires_after_an_hour(self) -> None:
        reg = await self.asyncSetUpUser()
        token = await self._issue(reg)
        self.advance(3599)
        self.assertEqual((await self.request("GET", userinfo(token))).code, 200)
        self.advance(1)
        resp = await self.request("GET", userinfo(token))
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_expired_tokens_are_swept_on_issue(self) -> None:
        reg = await self.asyncSetUpUser()
        await self._issue(reg)
        await self._issue(reg)
        self.assertEqual(await self.hs.stores.openid_tokens.count_tokens(), 2)
        self.advance(1800)
        await self._issue(reg)
        self.assertEqual(await self.hs.stores.openid_tokens.count_tokens(), 3)
        self.advance(1801)  # the first two are now expired, the third is not
        latest = await self._issue(reg)
        self.assertEqual(await self.hs.stores.openid_tokens.count_tokens(), 2)
        self.assertEqual((await self.request("GET", userinfo(latest))).code, 200)

    async def test_only_a_hash_is_stored(self) -> None:
        reg = await self.asyncSetUpUser()
        token = await self._issue(reg)
        rows = await self.hs.db.query("dump", "SELECT token_hash, user_id, created_ts, expires_ts"
                                      " FROM openid_tokens")
        self.assertEqual(len(rows), 1)
        token_hash, user_id, created, expires = rows[0]
        self.assertEqual(token_hash, hashlib.sha256(token.encode()).hexdigest())
        self.assertEqual(user_id, "@olga:test.local")
        self.assertEqual(int(expires) - int(created), 3600 * 1000)
        self.assertNotIn(token, repr(rows))

    async def test_deactivation_invalidates_tokens(self) -> None:
        reg = await self.asyncSetUpUser()
        token = await self._issue(reg)
        path = "/_matrix/client/v3/account/deactivate"
        first = await self.request("POST", path, {}, token=reg["access_token"])
        self.assertEqual(first.code, 401, first)
        done = await self.request("POST", path, {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "olga"}, "password": TEST_PASSWORD}},
            token=reg["access_token"])
        self.assertEqual(done.code, 200, done)
        resp = await self.request("GET", userinfo(token))
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
