"""POST /register and GET /register/available at the HTTP level."""

from __future__ import annotations

from tests.harness import TEST_PASSWORD, HomeserverTestCase

REGISTER = "/_matrix/client/v3/register"


class RegisterTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"registration": {"reserved_usernames": ["admin.*", "support"]}}

    async def test_stage_zero_offers_dummy_flow(self) -> None:
        resp = await self.request("POST", REGISTER, {"username": "bob", "password": TEST_PASSWORD})
        self.assertEqual(resp.code, 401)
        self.assertEqual(resp.json["flows"], [{"stages": ["m.login.dummy"]}])
        self.assertIsInstance(resp.json["session"], str)
        self.assertEqual(resp.json["completed"], [])

    async def test_register_returns_working_token(self) -> None:
        body = await self.register("alice", initial_device_display_name="Phone")
        self.assertEqual(body["user_id"], "@alice:test.local")
        self.assertTrue(body["device_id"])
        who = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                 token=body["access_token"])
        self.assertEqual(who.code, 200)
        self.assertEqual(who.json, {"user_id": "@alice:test.local", "is_guest": False,
                                    "device_id": body["device_id"]})
        dev = await self.request("GET", f"/_matrix/client/v3/devices/{body['device_id']}",
                                 token=body["access_token"])
        self.assertEqual(dev.json["display_name"], "Phone")
        events = await self.hs.stores.security_events.list_events(user_id="@alice:test.local")
        self.assertIn("register", [e.event_type for e in events])

    async def test_register_with_refresh_token(self) -> None:
        body = await self.register("refreshy", refresh_token=True)
        self.assertTrue(body["refresh_token"].startswith("prt_"))
        self.assertEqual(body["expires_in_ms"], 15 * 60 * 1000)

    async def test_inhibit_login(self) -> None:
        body = await self.register("quiet", inhibit_login=True)
        self.assertEqual(body["user_id"], "@quiet:test.local")
        self.assertNotIn("access_token", body)
        self.assertNotIn("device_id", body)

    async def test_chosen_device_id(self) -> None:
        body = await self.register("devy", device_id="MYDEVICE")
        self.assertEqual(body["device_id"], "MYDEVICE")

    async def test_username_taken(self) -> None:
        await self.register("taken")
        resp = await self.request("POST", REGISTER, {"username": "taken", "password": TEST_PASSWORD})
        self.assertMatrixError(resp, 400, "M_USER_IN_USE")

    async def test_invalid_usernames(self) -> None:
        for name in ("sp ace", "_appservice", "é", "a:b", "x" * 300, "eve\n"):
            resp = await self.request("POST", REGISTER, {"username": name, "password": TEST_PASSWORD})
            self.assertMatrixError(resp, 400, "M_INVALID_USERNAME")

    async def test_reserved_username_is_exclusive(self) -> None:
        for name in ("admin", "administrator", "support"):
            resp = await self.request("POST", REGISTER, {"username": name, "password": TEST_PASSWORD})
            self.assertMatrixError(resp, 400, "M_EXCLUSIVE")

    async def test_weak_password(self) -> None:
        resp = await self.request("POST", REGISTER, {"username": "weak", "password": "short"})
        self.assertMatrixError(resp, 400, "M_WEAK_PASSWORD")

    async def test_missing_password_after_auth(self) -> None:
        first = await self.request("POST", REGISTER, {"username": "nopw"})
        self.assertEqual(first.code, 401)
        resp = await self.request("POST", REGISTER, {
            "username": "nopw", "auth": {"type": "m.login.dummy", "session": first.json["session"]}})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")

    async def test_generated_username(self) -> None:
        first = await self.request("POST", REGISTER, {"password": TEST_PASSWORD})
        resp = await self.request("POST", REGISTER, {
            "password": TEST_PASSWORD,
            "auth": {"type": "m.login.dummy", "session": first.json["session"]}})
        self.assertEqual(resp.code, 200, resp)
        self.assertRegex(resp.json["user_id"], r"^@u\d{10}:test\.local$")

    async def test_unknown_uia_session(self) -> None:
        resp = await self.request("POST", REGISTER, {
            "username": "ghost", "password": TEST_PASSWORD,
            "auth": {"type": "m.login.dummy", "session": "nope"}})
        self.assertMatrixError(resp, 400, "M_UNKNOWN")

    async def test_unknown_auth_type(self) -> None:
        resp = await self.request("POST", REGISTER, {
            "username": "odd", "password": TEST_PASSWORD, "auth": {"type": "m.login.fancy"}})
        self.assertEqual(resp.code, 401)
        self.assertEqual(resp.json["errcode"], "M_UNRECOGNIZED")
        self.assertIn("flows", resp.json)

    async def test_bad_types(self) -> None:
        for body in ({"username": 5}, {"password": ["x"]}, {"inhibit_login": "yes"},
                     {"auth": "dummy"}, {"device_id": ""}):
            resp = await self.request("POST", REGISTER, body)
            self.assertEqual(resp.code, 400, (body, resp))
            self.assertIn(resp.json["errcode"], ("M_BAD_JSON", "M_INVALID_PARAM"), (body, resp))

    async def test_guest_registration_is_off(self) -> None:
        resp = await self.request("POST", REGISTER + "?kind=guest", {})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_available(self) -> None:
        resp = await self.request("GET", REGISTER + "/available?username=freeone")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.json, {"available": True})
        await self.register("usedone")
        resp = await self.request("GET", REGISTER + "/available?username=usedone")
        self.assertMatrixError(resp, 400, "M_USER_IN_USE")
        resp = await self.request("GET", REGISTER + "/available?username=Bad!")
        self.assertMatrixError(resp, 400, "M_INVALID_USERNAME")
        resp = await self.request("GET", REGISTER + "/available")
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")

    async def test_r0_path_works(self) -> None:
        resp = await self.request("POST", "/_matrix/client/r0/register", {"username": "legacy"})
        self.assertEqual(resp.code, 401)


class ClosedRegistrationTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"registration": {"enabled": False}}

    async def test_registration_closed(self) -> None:
        resp = await self.request("POST", REGISTER, {"username": "x", "password": TEST_PASSWORD})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("GET", REGISTER + "/available?username=x")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class GuestRegistrationTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"registration": {"allow_guests": True}}

    async def test_guest_gets_limited_token(self) -> None:
        resp = await self.request("POST", REGISTER + "?kind=guest", {})
        self.assertEqual(resp.code, 200, resp)
        token = resp.json["access_token"]
        who = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        self.assertEqual(who.json["is_guest"], True)
        devices = await self.request("GET", "/_matrix/client/v3/devices", token=token)
        self.assertMatrixError(devices, 403, "M_GUEST_ACCESS_FORBIDDEN")
