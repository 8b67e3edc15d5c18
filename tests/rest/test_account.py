"""POST /account/password and /account/deactivate."""

from __future__ import annotations

from tests.harness import TEST_PASSWORD, HomeserverTestCase

PASSWORD = "/_matrix/client/v3/account/password"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"
WHOAMI = "/_matrix/client/v3/account/whoami"


def auth(session: str, user: str, password: str = TEST_PASSWORD) -> dict:
    return {"type": "m.login.password", "session": session,
            "identifier": {"type": "m.id.user", "user": user}, "password": password}


class PasswordChangeTest(HomeserverTestCase):
    async def _change(self, token: str, user: str, body: dict) -> object:
        first = await self.request("POST", PASSWORD, body, token=token)
        self.assertEqual(first.code, 401, first)
        return await self.request("POST", PASSWORD, {**body, "auth": auth(first.json["session"], user)},
                                  token=token)

    async def test_change_logs_out_other_devices_by_default(self) -> None:
        reg = await self.register("nina")
        other = (await self.login("nina")).json
        resp = await self._change(reg["access_token"], "nina", {"new_password": "a-new-passw0rd"})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.request("GET", WHOAMI, token=reg["access_token"])).code, 200)
        gone = await self.request("GET", WHOAMI, token=other["access_token"])
        self.assertMatrixError(gone, 401, "M_UNKNOWN_TOKEN")
        self.assertMatrixError(await self.login("nina"), 403, "M_FORBIDDEN")
        self.assertEqual((await self.login("nina", "a-new-passw0rd")).code, 200)
        devices = await self.request("GET", "/_matrix/client/v3/devices", token=reg["access_token"])
        self.assertNotIn(other["device_id"], [d["device_id"] for d in devices.json["devices"]])
        events = await self.hs.stores.security_events.list_events(event_type="password_change")
        self.assertEqual(len(events), 1)

    async def test_change_keeping_other_devices(self) -> None:
        reg = await self.register("oscar")
        other = (await self.login("oscar")).json
        resp = await self._change(reg["access_token"], "oscar",
                                  {"new_password": "another-passw0rd", "logout_devices": False})
        self.assertEqual(resp.code, 200)
        self.assertEqual((await self.request("GET", WHOAMI, token=other["access_token"])).code, 200)

    async def test_weak_new_password(self) -> None:
        reg = await self.register("paul")
        resp = await self._change(reg["access_token"], "paul", {"new_password": "short"})
        self.assertMatrixError(resp, 400, "M_WEAK_PASSWORD")
        self.assertEqual((await self.login("paul")).code, 200)

    async def test_wrong_current_password(self) -> None:
        reg = await self.register("quinn")
        first = await self.request("POST", PASSWORD, {"new_password": "whatever-123"},
                                   token=reg["access_token"])
        resp = await self.request("POST", PASSWORD, {
            "new_password": "whatever-123", "auth": auth(first.json["session"], "quinn", "nope-nope")},
            token=reg["access_token"])
        self.assertEqual(resp.code, 401)
        self.assertEqual(resp.json["errcode"], "M_FORBIDDEN")
        self.assertEqual((await self.login("quinn")).code, 200)

    async def test_bad_input(self) -> None:
        reg = await self.register("rita")
        resp = await self.request("POST", PASSWORD, {}, token=reg["access_token"])
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("POST", PASSWORD, {"new_password": 1}, token=reg["access_token"])
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", PASSWORD, {"new_password": "x"})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class DeactivateTest(HomeserverTestCase):
    async def test_deactivate(self) -> None:
        reg = await self.register("sam")
        await self.hs.stores.profiles.set_displayname("@sam:test.local", "Sam")
        first = await self.request("POST", DEACTIVATE, {"erase": True}, token=reg["access_token"])
        self.assertEqual(first.code, 401)
        resp = await self.request("POST", DEACTIVATE, {
            "erase": True, "auth": auth(first.json["session"], "sam")}, token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"id_server_unbind_result": "no-support"})
        gone = await self.request("GET", WHOAMI, token=reg["access_token"])
        self.assertMatrixError(gone, 401, "M_UNKNOWN_TOKEN")
        # Deactivation drops the password hash, so no password is "right" any more: the
        # login is refused like any wrong password (the account's state is not revealed).
        self.assertMatrixError(await self.login("sam"), 403, "M_FORBIDDEN")
        profile = await self.hs.stores.profiles.get_profile("@sam:test.local")
        self.assertIsNone(profile.displayname)
        # The user id stays reserved.
        retry = await self.request("POST", "/_matrix/client/v3/register",
                                   {"username": "sam", "password": TEST_PASSWORD})
        self.assertMatrixError(retry, 400, "M_USER_IN_USE")
        events = await self.hs.stores.security_events.list_events(event_type="deactivate")
        self.assertEqual(len(events), 1)

    async def test_deactivate_wrong_password(self) -> None:
        reg = await self.register("tina")
        first = await self.request("POST", DEACTIVATE, {}, token=reg["access_token"])
        resp = await self.request("POST", DEACTIVATE, {
            "auth": auth(first.json["session"], "tina", "bad-password")}, token=reg["access_token"])
        self.assertEqual(resp.code, 401)
        self.assertEqual((await self.request("GET", WHOAMI, token=reg["access_token"])).code, 200)

    async def test_deactivate_bad_input(self) -> None:
        reg = await self.register("uma")
        resp = await self.request("POST", DEACTIVATE, {"erase": "yes"}, token=reg["access_token"])
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", DEACTIVATE, {"auth": "password"}, token=reg["access_token"])
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
