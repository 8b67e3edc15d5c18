"""Access-token JWT checks and refresh-token rotation at the HTTP level, with a
controllable clock (no sleeps)."""

from __future__ import annotations

import base64
import json

import jwt

from homeserver.auth.access_tokens import generate_signing_key_pem
from tests.harness import HomeserverTestCase

WHOAMI = "/_matrix/client/v3/account/whoami"
REFRESH = "/_matrix/client/v3/refresh"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class AccessTokenTest(HomeserverTestCase):
    async def _session(self, name: str) -> dict:
        await self.register(name)
        return (await self.login(name, refresh_token=True)).json

    async def test_claims(self) -> None:
        tokens = await self._session("claims")
        header = jwt.get_unverified_header(tokens["access_token"])
        self.assertEqual(header["alg"], "EdDSA")
        self.assertEqual(header["kid"], "test1")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        self.assertEqual(claims["sub"], "@claims:test.local")
        self.assertEqual(claims["aud"], "test.local")
        self.assertEqual(claims["iss"], "https://test.local")
        self.assertEqual(claims["device_id"], tokens["device_id"])
        self.assertEqual(claims["exp"] - claims["iat"], 15 * 60)
        for key in ("sid", "jti"):
            self.assertTrue(claims[key])

    async def test_expiry_with_skew_is_soft_logout(self) -> None:
        tokens = await self._session("expiry")
        self.advance(15 * 60 + 59)  # expired, but inside the 60 s skew
        self.assertEqual((await self.request("GET", WHOAMI, token=tokens["access_token"])).code, 200)
        self.advance(2)
        resp = await self.request("GET", WHOAMI, token=tokens["access_token"])
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
        self.assertIs(resp.json["soft_logout"], True)
        # The refresh token still gets a fresh access token.
        refreshed = await self.request("POST", REFRESH, {"refresh_token": tokens["refresh_token"]})
        self.assertEqual(refreshed.code, 200)
        ok = await self.request("GET", WHOAMI, token=refreshed.json["access_token"])
        self.assertEqual(ok.code, 200)

    async def test_long_lived_token_without_refresh(self) -> None:
        reg = await self.register("longlived")
        self.assertNotIn("refresh_token", reg)
        self.advance(300 * 86400)
        self.assertEqual((await self.request("GET", WHOAMI, token=reg["access_token"])).code, 200)
        self.advance(66 * 86400)
        resp = await self.request("GET", WHOAMI, token=reg["access_token"])
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_forged_tokens_rejected(self) -> None:
        tokens = await self._session("forgery")
        good = tokens["access_token"]
        head, payload, sig = good.split(".")
        claims = jwt.decode(good, options={"verify_signature": False})
        other_key = generate_signing_key_pem("EdDSA")
        forged = {
            "tampered payload": ".".join(
                [head, _b64({**claims, "sub": "@admin:test.local"}), sig]),
            "bad signature": ".".join([head, payload, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")]),
            "other key same kid": jwt.encode(claims, other_key, algorithm="EdDSA",
                                             headers={"kid": "test1"}),
            "unknown kid": jwt.encode(claims, other_key, algorithm="EdDSA",
                                      headers={"kid": "nope"}),
            "alg none": _b64({"alg": "none", "kid": "test1"}) + "." + _b64(claims) + ".",
            "hs256 confusion": jwt.encode(claims, "x" * 40, algorithm="HS256",
                                          headers={"kid": "test1"}),
            "garbage": "not-a-jwt",
        }
        for name, token in forged.items():
            resp = await self.request("GET", WHOAMI, token=token)
            self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
            self.assertIs(resp.json["soft_logout"], False, name)

    async def test_wrong_audience_and_issuer(self) -> None:
        # Sign with the server's own key but for another audience / issuer.
        tokens = await self._session("audience")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        key = self.config.auth.signing_keys[0].key
        for change in ({"aud": "other.server"}, {"iss": "https://evil"}):
            token = jwt.encode({**claims, **change}, key, algorithm="EdDSA",
                               headers={"kid": "test1"})
            resp = await self.request("GET", WHOAMI, token=token)
            self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
        # Same key, right audience: accepted (so the rejection above is the claim).
        token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "test1"})
        self.assertEqual((await self.request("GET", WHOAMI, token=token)).code, 200)

    async def test_token_from_the_future(self) -> None:
        tokens = await self._session("future")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        key = self.config.auth.signing_keys[0].key
        token = jwt.encode({**claims, "iat": claims["iat"] + 3600, "exp": claims["exp"] + 3600},
                           key, algorithm="EdDSA", headers={"kid": "test1"})
        resp = await self.request("GET", WHOAMI, token=token)
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")


class RefreshTokenTest(HomeserverTestCase):
    async def _session(self, name: str) -> dict:
        await self.register(name)
        return (await self.login(name, refresh_token=True)).json

    async def test_rotation(self) -> None:
        tokens = await self._session("rotate")
        r1 = await self.request("POST", REFRESH, {"refresh_token": tokens["refresh_token"]})
        self.assertEqual(r1.code, 200, r1)
        self.assertNotEqual(r1.json["refresh_token"], tokens["refresh_token"])
        self.assertNotEqual(r1.json["access_token"], tokens["access_token"])
        self.assertEqual(r1.json["expires_in_ms"], 15 * 60 * 1000)
        r2 = await self.request("POST", REFRESH, {"refresh_token": r1.json["refresh_token"]})
        self.assertEqual(r2.code, 200)
        who = await self.request("GET", WHOAMI, token=r2.json["access_token"])
        self.assertEqual(who.json["device_id"], tokens["device_id"])
        # v1 path works too.
        r3 = await self.request("POST", "/_matrix/client/v1/refresh",
                                {"refresh_token": r2.json["refresh_token"]})
        self.assertEqual(r3.code, 200)

    async def test_reuse_revokes_whole_session(self) -> None:
        tokens = await self._session("reuse")
        r1 = await self.request("POST", REFRESH, {"refresh_token": tokens["refresh_token"]})
        self.assertEqual(r1.code, 200)
        replay = await self.request("POST", REFRESH, {"refresh_token": tokens["refresh_token"]})
        self.assertMatrixError(replay, 401, "M_UNKNOWN_TOKEN")
        # Every token of the session is dead, including the newest pair.
        for token in (tokens["access_token"], r1.json["access_token"]):
            self.assertMatrixError(await self.request("GET", WHOAMI, token=token),
                                   401, "M_UNKNOWN_TOKEN")
        newest = await self.request("POST", REFRESH, {"refresh_token": r1.json["refresh_token"]})
        self.assertMatrixError(newest, 401, "M_UNKNOWN_TOKEN")
        events = await self.hs.stores.security_events.list_events(event_type="refresh_token_reuse")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].user_id, "@reuse:test.local")
        self.assertEqual(events[0].device_id, tokens["device_id"])

    async def test_refresh_token_expires_after_30_days(self) -> None:
        tokens = await self._session("stale")
        self.advance(30 * 86400 + 1)
        resp = await self.request("POST", REFRESH, {"refresh_token": tokens["refresh_token"]})
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_refresh_after_logout_fails(self) -> None:
        tokens = await self._session("gone")
        await self.request("POST", "/_matrix/client/v3/logout", token=tokens["access_token"])
        resp = await self.request("POST", REFRESH, {"refresh_token": tokens["refresh_token"]})
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_bad_refresh_requests(self) -> None:
        resp = await self.request("POST", REFRESH, {"refresh_token": "prt_unknown"})
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
        resp = await self.request("POST", REFRESH, {})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("POST", REFRESH, {"refresh_token": 12})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", REFRESH, raw_body=b"nope")
        self.assertMatrixError(resp, 400, "M_NOT_JSON")

    async def test_refresh_tokens_stored_only_as_hashes(self) -> None:
        tokens = await self._session("hashed")
        rows = await self.hs.db.query("t", "SELECT token_hash FROM refresh_tokens")
        stored = [r[0] for r in rows]
        self.assertTrue(stored)
        self.assertNotIn(tokens["refresh_token"], stored)
        import hashlib
        self.assertIn(hashlib.sha256(tokens["refresh_token"].encode()).hexdigest(), stored)
