"""Shared-secret registration (``/_synapse/admin/v1/register``), as Synapse's tools use it."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from homeserver.rest.admin.shared_secret_register import NonceStore, compute_mac
from tests.harness import TEST_PASSWORD, HomeserverTestCase

PATH = "/_synapse/admin/v1/register"
SECRET = "s3cret-for-tests-only"


class ComputeMacTest(HomeserverTestCase):
    """The MAC's byte layout, checked against the construction in Synapse's docs."""

    def config_overrides(self) -> dict:
        return {"registration": {"shared_secret": SECRET}}

    def _reference(self, *fields: str) -> str:
        return hmac.new(SECRET.encode(), b"\x00".join(f.encode() for f in fields),
                        hashlib.sha1).hexdigest()

    async def test_layout(self) -> None:
        self.assertEqual(compute_mac(SECRET, "n", "bob", "pw", False),
                         self._reference("n", "bob", "pw", "notadmin"))
        self.assertEqual(compute_mac(SECRET, "n", "bob", "pw", True),
                         self._reference("n", "bob", "pw", "admin"))
        self.assertEqual(compute_mac(SECRET, "n", "bøb", "pässwörd", True, "bot"),
                         self._reference("n", "bøb", "pässwörd", "admin", "bot"))

    async def test_nonce_store_expiry_and_bound(self) -> None:
        store = NonceStore(self.clock, lifetime_s=60, max_outstanding=3)
        a = store.issue()
        self.advance(60)
        self.assertTrue(store.consume(a))  # exactly 60 s old: still valid (as Synapse)
        self.assertFalse(store.consume(a))  # single use
        b = store.issue()
        self.advance(60.5)
        self.assertFalse(store.consume(b))
        nonces = [store.issue() for _ in range(5)]
        self.assertEqual(len(store), 3)  # oldest evicted
        self.assertFalse(store.consume(nonces[0]))
        self.assertTrue(store.consume(nonces[-1]))


class SharedSecretRegisterTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"registration": {"shared_secret": SECRET}}

    async def nonce(self) -> str:
        resp = await self.request("GET", PATH)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(set(resp.json), {"nonce"})
        return resp.json["nonce"]

    async def body(
        self, username: str, password: str = TEST_PASSWORD, admin: bool = False,
        user_type: str | None = None, nonce: str | None = None, **extra: Any,
    ) -> dict[str, Any]:
        nonce = nonce or await self.nonce()
        body: dict[str, Any] = {
            "nonce": nonce, "username": username, "password": password, "admin": admin,
            "mac": compute_mac(SECRET, nonce, username, password, admin, user_type),
        }
        if user_type is not None:
            body["user_type"] = user_type
        body.update(extra)
        return body

    async def test_register_and_use_the_session(self) -> None:
        resp = await self.request("POST", PATH, await self.body("bob", displayname="Bob B"))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@bob:test.local")
        self.assertEqual(resp.json["home_server"], "test.local")
        self.assertIsInstance(resp.json["device_id"], str)
        self.assertNotIn("refresh_token", resp.json)
        whoami = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                    token=resp.json["access_token"])
        self.assertEqual(whoami.code, 200, whoami)
        self.assertEqual(whoami.json["user_id"], "@bob:test.local")
        self.assertEqual(whoami.json["device_id"], resp.json["device_id"])
        user = await self.hs.stores.users.get_user("@bob:test.local")
        assert user is not None
        self.assertFalse(user.is_admin)
        profile = await self.hs.stores.profiles.get_profile("@bob:test.local")
        assert profile is not None
        self.assertEqual(profile.displayname, "Bob B")
        login = await self.login("bob")
        self.assertEqual(login.code, 200, login)

    async def test_register_admin(self) -> None:
        resp = await self.request("POST", PATH, await self.body("root", admin=True))
        self.assertEqual(resp.code, 200, resp)
        user = await self.hs.stores.users.get_user("@root:test.local")
        assert user is not None
        self.assertTrue(user.is_admin)
        # Display name defaults to the localpart, as in Synapse.
        profile = await self.hs.stores.profiles.get_profile("@root:test.local")
        assert profile is not None
        self.assertEqual(profile.displayname, "root")
        # The new admin can use the token-authenticated admin API.
        listed = await self.request("GET", "/_synapse/admin/v1/registration_tokens",
                                    token=resp.json["access_token"])
        self.assertEqual(listed.code, 200, listed)

    async def test_refresh_token_on_request(self) -> None:
        resp = await self.request("POST", PATH, await self.body("ref", refresh_token=True))
        self.assertEqual(resp.code, 200, resp)
        self.assertIn("refresh_token", resp.json)

    async def test_password_policy_not_enforced(self) -> None:
        # The test config requires 8 characters; shared-secret registration follows
        # Synapse and leaves the choice to the operator.
        resp = await self.request("POST", PATH, await self.body("shorty", password="abc"))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.login("shorty", password="abc")).code, 200)

    async def test_wrong_mac_is_forbidden_and_burns_the_nonce(self) -> None:
        body = await self.body("eve")
        good_mac = body["mac"]
        body["mac"] = compute_mac("not-the-secret", body["nonce"], "eve", TEST_PASSWORD, False)
        resp = await self.request("POST", PATH, body)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertFalse(await self.hs.stores.users.user_exists("@eve:test.local"))
        body["mac"] = good_mac
        resp = await self.request("POST", PATH, body)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")
        self.assertEqual(resp.json["error"], "unrecognised nonce")

    async def test_mac_covers_admin_flag_and_password(self) -> None:
        body = await self.body("mallory", admin=False)
        body["admin"] = True
        self.assertMatrixError(await self.request("POST", PATH, body), 403, "M_FORBIDDEN")
        body = await self.body("mallory")
        body["password"] = "another-password"
        self.assertMatrixError(await self.request("POST", PATH, body), 403, "M_FORBIDDEN")
        self.assertFalse(await self.hs.stores.users.user_exists("@mallory:test.local"))

    async def test_non_hex_or_non_ascii_mac(self) -> None:
        for mac in ("", "zz", "ä" * 40, "A" * 40):
            body = await self.body("odd")
            body["mac"] = mac
            self.assertMatrixError(await self.request("POST", PATH, body), 403, "M_FORBIDDEN")

    async def test_nonce_is_single_use(self) -> None:
        body = await self.body("first")
        self.assertEqual((await self.request("POST", PATH, body)).code, 200)
        again = await self.body("second", nonce=body["nonce"])
        resp = await self.request("POST", PATH, again)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")
        self.assertEqual(resp.json["error"], "unrecognised nonce")

    async def test_unknown_nonce(self) -> None:
        resp = await self.request("POST", PATH, await self.body("x", nonce="made-up"))
        self.assertMatrixError(resp, 400, "M_UNKNOWN")

    async def test_nonce_expires_after_60_seconds(self) -> None:
        fresh = await self.body("intime")
        self.advance(59)
        self.assertEqual((await self.request("POST", PATH, fresh)).code, 200)
        stale = await self.body("late")
        self.advance(61)
        self.assertMatrixError(await self.request("POST", PATH, stale), 400, "M_UNKNOWN")
        self.assertFalse(await self.hs.stores.users.user_exists("@late:test.local"))

    async def test_invalid_username(self) -> None:
        for name in ("bad name", "_underscore", "a" * 300):
            resp = await self.request("POST", PATH, await self.body(name))
            self.assertMatrixError(resp, 400, "M_INVALID_USERNAME")
        # NUL would let fields of the MAC run into each other: refused at the HTTP layer.
        resp = await self.request("POST", PATH, await self.body("nul\x00name"))
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_username_is_lowercased(self) -> None:
        resp = await self.request("POST", PATH, await self.body("Carol"))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@carol:test.local")

    async def test_username_taken(self) -> None:
        await self.register("dave")
        resp = await self.request("POST", PATH, await self.body("dave"))
        self.assertMatrixError(resp, 400, "M_USER_IN_USE")

    async def test_user_type_is_refused_after_the_mac(self) -> None:
        resp = await self.request("POST", PATH, await self.body("botty", user_type="bot"))
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # The MAC still has to be right: without the user_type in it, it is not.
        body = await self.body("botty")
        body["user_type"] = "bot"
        self.assertMatrixError(await self.request("POST", PATH, body), 403, "M_FORBIDDEN")
        self.assertFalse(await self.hs.stores.users.user_exists("@botty:test.local"))

    async def test_bad_input_is_400_never_500(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "M_BAD_JSON"),
            ({"nonce": ["a"]}, "M_UNKNOWN"),
            ({"nonce": {"a": 1}}, "M_UNKNOWN"),
            ({"nonce": None}, "M_UNKNOWN"),
        ]
        for body, errcode in cases:
            self.assertMatrixError(await self.request("POST", PATH, body), 400, errcode)
        field_cases: list[tuple[dict[str, Any], str]] = [
            ({"username": 5}, "M_INVALID_USERNAME"),
            ({"username": ""}, "M_INVALID_USERNAME"),
            ({"password": 5}, "M_INVALID_PARAM"),
            ({"password": ""}, "M_INVALID_PARAM"),
            ({"password": "x" * 513}, "M_INVALID_PARAM"),
            ({"password": "a\x00b"}, "M_BAD_JSON"),
            ({"admin": "yes"}, "M_BAD_JSON"),
            ({"user_type": 7}, "M_INVALID_PARAM"),
            ({"displayname": 7}, "M_INVALID_PARAM"),
            ({"displayname": "d" * 257}, "M_INVALID_PARAM"),
            ({"displayname": "nul\x00"}, "M_BAD_JSON"),
            ({"refresh_token": "yes"}, "M_BAD_JSON"),
            ({"mac": 12345}, "M_BAD_JSON"),
            ({"mac": None}, "M_BAD_JSON"),
        ]
        for override, errcode in field_cases:
            body = await self.body("fieldcase")
            body.update(override)
            resp = await self.request("POST", PATH, body)
            self.assertMatrixError(resp, 400, errcode)
        for missing in ("username", "password", "mac"):
            body = await self.body("missing")
            del body[missing]
            self.assertMatrixError(await self.request("POST", PATH, body), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("POST", PATH, raw_body=b"{nope"), 400, "M_NOT_JSON")
        self.assertMatrixError(await self.request("POST", PATH, raw_body=b"[]"), 400, "M_BAD_JSON")

    async def test_lone_surrogates_are_400_never_500(self) -> None:
        # JSON may carry a lone surrogate escape, which Python cannot encode as UTF-8;
        # the HTTP layer refuses such bodies before the servlet sees them.
        for field in ("username", "password", "displayname", "user_type", "mac"):
            body = await self.body("surrogate")
            body[field] = "PLACEHOLDER"
            raw = json.dumps(body).replace('"PLACEHOLDER"', '"a\\ud800b"').encode()
            self.assertMatrixError(await self.request("POST", PATH, raw_body=raw), 400, "M_BAD_JSON")

    async def test_security_events(self) -> None:
        body = await self.body("audited", admin=True)
        bad = dict(body, mac="0" * 40)
        self.assertMatrixError(await self.request("POST", PATH, bad), 403, "M_FORBIDDEN")
        self.assertEqual((await self.request("POST", PATH, await self.body("audited", admin=True))).code,
                         200)
        events = await self.hs.stores.security_events.list_events(event_type="register")
        outcomes = [(e.outcome, e.user_id, e.details) for e in events]
        self.assertIn(("success", "@audited:test.local", {"via": "shared_secret", "admin": True}),
                      outcomes)
        self.assertIn(("failure", None, {"via": "shared_secret", "admin": True}), outcomes)
        everything = repr(await self.hs.stores.security_events.list_events(limit=1000))
        self.assertNotIn(SECRET, everything)
        self.assertNotIn(TEST_PASSWORD, everything)
        self.assertNotIn(body["nonce"], everything)

    async def test_access_token_not_needed_and_not_sufficient(self) -> None:
        # A logged-in admin without the secret cannot use this endpoint.
        reg = await self.register("someadmin")
        await self.hs.stores.users.set_admin(reg["user_id"], True)
        body = await self.body("viatoken")
        body["mac"] = "0" * 40
        resp = await self.request("POST", PATH, body, token=reg["access_token"])
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class SharedSecretDisabledTest(HomeserverTestCase):
    """Without ``registration.shared_secret`` the endpoint refuses, as Synapse does."""

    async def test_disabled(self) -> None:
        resp = await self.request("GET", PATH)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")
        self.assertEqual(resp.json["error"], "Shared secret registration is not enabled")
        body = {"nonce": "n", "username": "u", "password": "p", "mac": "0" * 40}
        resp = await self.request("POST", PATH, body)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")
        self.assertEqual(resp.json["error"], "Shared secret registration is not enabled")
        self.assertFalse(await self.hs.stores.users.user_exists("@u:test.local"))
