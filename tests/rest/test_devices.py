"""Device management endpoints, including UIA-protected deletes."""

from __future__ import annotations

from tests.harness import TEST_PASSWORD, HomeserverTestCase

DEVICES = "/_matrix/client/v3/devices"


def password_auth(session: str, user: str = "lena", password: str = TEST_PASSWORD) -> dict:
    return {"type": "m.login.password", "session": session,
            "identifier": {"type": "m.id.user", "user": user}, "password": password}


class DevicesTest(HomeserverTestCase):
    async def asyncSetUpUser(self) -> tuple[str, str]:  # noqa: N802
        reg = await self.register("lena")
        return reg["access_token"], reg["device_id"]

    async def test_get_update_device(self) -> None:
        token, device_id = await self.asyncSetUpUser()
        resp = await self.request("PUT", f"{DEVICES}/{device_id}", {"display_name": "Work"},
                                  token=token)
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.json, {})
        resp = await self.request("GET", f"{DEVICES}/{device_id}", token=token)
        self.assertEqual(resp.json["display_name"], "Work")
        self.assertEqual(resp.json["device_id"], device_id)

    async def test_unknown_device_404(self) -> None:
        token, _ = await self.asyncSetUpUser()
        for method, body in (("GET", None), ("PUT", {"display_name": "x"}), ("DELETE", {})):
            resp = await self.request(method, f"{DEVICES}/NOPE", body, token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_other_users_devices_are_invisible(self) -> None:
        token, device_id = await self.asyncSetUpUser()
        other = await self.register("mallory")
        resp = await self.request("GET", f"{DEVICES}/{device_id}", token=other["access_token"])
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("PUT", f"{DEVICES}/{device_id}", {"display_name": "pwned"},
                                  token=other["access_token"])
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_bad_update_body(self) -> None:
        token, device_id = await self.asyncSetUpUser()
        resp = await self.request("PUT", f"{DEVICES}/{device_id}", {"display_name": 5}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_delete_device_requires_uia_and_revokes(self) -> None:
        token, _ = await self.asyncSetUpUser()
        second = (await self.login("lena")).json
        path = f"{DEVICES}/{second['device_id']}"
        first = await self.request("DELETE", path, {}, token=token)
        self.assertEqual(first.code, 401)
        self.assertEqual(first.json["flows"], [{"stages": ["m.login.password"]}])
        wrong = await self.request("DELETE", path, {
            "auth": password_auth(first.json["session"], password="wrong-one!!")}, token=token)
        self.assertEqual(wrong.code, 401)
        self.assertEqual(wrong.json["errcode"], "M_FORBIDDEN")
        ok = await self.request("DELETE", path, {"auth": password_auth(first.json["session"])},
                                token=token)
        self.assertEqual(ok.code, 200, ok)
        gone = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                  token=second["access_token"])
        self.assertMatrixError(gone, 401, "M_UNKNOWN_TOKEN")
        events = await self.hs.stores.security_events.list_events(event_type="device_delete")
        self.assertEqual([e.device_id for e in events], [second["device_id"]])

    async def test_uia_password_for_another_user_is_refused(self) -> None:
        token, device_id = await self.asyncSetUpUser()
        await self.register("mallory")
        first = await self.request("DELETE", f"{DEVICES}/{device_id}", {}, token=token)
        resp = await self.request("DELETE", f"{DEVICES}/{device_id}", {
            "auth": password_auth(first.json["session"], user="mallory")}, token=token)
        # As Synapse (SyTest "requires UI auth user to match device owner"): 403.
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        still = await self.request("GET", f"{DEVICES}/{device_id}", token=token)
        self.assertEqual(still.code, 200, still)

    async def test_delete_devices_bulk(self) -> None:
        token, own = await self.asyncSetUpUser()
        a = (await self.login("lena")).json
        b = (await self.login("lena")).json
        body: dict = {"devices": [a["device_id"], b["device_id"], "UNKNOWN"]}
        first = await self.request("POST", "/_matrix/client/v3/delete_devices", body, token=token)
        self.assertEqual(first.code, 401)
        body["auth"] = password_auth(first.json["session"])
        resp = await self.request("POST", "/_matrix/client/v3/delete_devices", body, token=token)
        self.assertEqual(resp.code, 200, resp)
        left = await self.request("GET", DEVICES, token=token)
        self.assertEqual([d["device_id"] for d in left.json["devices"]], [own])
        for t in (a["access_token"], b["access_token"]):
            resp = await self.request("GET", "/_matrix/client/v3/account/whoami", token=t)
            self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_delete_devices_bad_input(self) -> None:
        token, _ = await self.asyncSetUpUser()
        for raw in (b"{bad", b"[]"):
            resp = await self.request("POST", "/_matrix/client/v3/delete_devices", raw_body=raw,
                                      token=token)
            self.assertEqual(resp.code, 400)
        resp = await self.request("POST", "/_matrix/client/v3/delete_devices", {}, token=token)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("POST", "/_matrix/client/v3/delete_devices",
                                  {"devices": "ABC"}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_uia_session_bound_to_operation(self) -> None:
        token, _ = await self.asyncSetUpUser()
        second = (await self.login("lena")).json
        first = await self.request("DELETE", f"{DEVICES}/{second['device_id']}", {}, token=token)
        resp = await self.request("POST", "/_matrix/client/v3/delete_devices", {
            "devices": [second["device_id"]], "auth": password_auth(first.json["session"])},
            token=token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_devices_need_auth(self) -> None:
        resp = await self.request("GET", DEVICES)
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
