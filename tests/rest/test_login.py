"""GET/POST /login, /logout, /logout/all and whoami at the HTTP level."""

from __future__ import annotations

import logging

from argon2 import PasswordHasher as Argon2

from tests.harness import TEST_PASSWORD, HomeserverTestCase

WHOAMI = "/_matrix/client/v3/account/whoami"


class LoginTest(HomeserverTestCase):
    async def test_login_flows(self) -> None:
        resp = await self.request("GET", "/_matrix/client/v3/login")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.json, {"flows": [{"type": "m.login.password"}]})

    async def test_login_with_localpart_mxid_legacy_user_and_case(self) -> None:
        await self.register("carol")
        for ident in ("carol", "@carol:test.local", "CAROL"):
            resp = await self.login(ident)
            self.assertEqual(resp.code, 200, (ident, resp))
            self.assertEqual(resp.json["user_id"], "@carol:test.local")
            self.assertNotIn("refresh_token", resp.json)
        legacy = await self.request("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "user": "carol", "password": TEST_PASSWORD})
        self.assertEqual(legacy.code, 200, legacy)

    async def test_login_new_device_and_display_name(self) -> None:
        await self.register("dave")
        resp = await self.login("dave", initial_device_display_name="Laptop")
        token = resp.json["access_token"]
        who = await self.request("GET", WHOAMI, token=token)
        self.assertEqual(who.json["device_id"], resp.json["device_id"])
        devices = await self.request("GET", "/_matrix/client/v3/devices", token=token)
        names = {d["device_id"]: d.get("display_name") for d in devices.json["devices"]}
        self.assertEqual(len(names), 2)
        self.assertEqual(names[resp.json["device_id"]], "Laptop")
        dev = devices.json["devices"][0]
        self.assertIsInstance(dev["last_seen_ip"], str)
        self.assertIsInstance(dev["last_seen_ts"], int)

    async def test_login_reusing_device_id_revokes_old_token(self) -> None:
        await self.register("erin")
        first = await self.login("erin", device_id="SAMEDEV")
        second = await self.login("erin", device_id="SAMEDEV")
        self.assertEqual(second.json["device_id"], "SAMEDEV")
        old = await self.request("GET", WHOAMI, token=first.json["access_token"])
        self.assertMatrixError(old, 401, "M_UNKNOWN_TOKEN")
        new = await self.request("GET", WHOAMI, token=second.json["access_token"])
        self.assertEqual(new.code, 200)
        devices = await self.request("GET", "/_matrix/client/v3/devices",
                                     token=second.json["access_token"])
        self.assertEqual(sum(d["device_id"] == "SAMEDEV" for d in devices.json["devices"]), 1)

    async def test_wrong_password_and_unknown_user(self) -> None:
        await self.register("frank")
        resp = await self.login("frank", "not-the-password")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.login("nobody-here")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.login("@frank:other.server")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        events = await self.hs.stores.security_events.list_events(event_type="login")
        reasons = {e.reason for e in events if e.outcome == "failure"}
        self.assertEqual(reasons, {"bad_password", "unknown_user"})

    async def test_bad_login_requests(self) -> None:
        cases = [
            ({"type": "m.login.token", "token": "x"}, 400, "M_UNKNOWN"),
            ({"type": "m.login.password", "identifier": {"type": "m.id.phone"}, "password": "x"},
             400, "M_UNKNOWN"),
            ({"type": "m.login.password", "password": "x"}, 400, "M_MISSING_PARAM"),
            ({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "a"}},
             400, "M_MISSING_PARAM"),
            ({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": 5},
              "password": "x"}, 400, "M_BAD_JSON"),
            ({"type": "m.login.password", "identifier": "alice", "password": "x"},
             400, "M_BAD_JSON"),
        ]
        for body, code, errcode in cases:
            resp = await self.request("POST", "/_matrix/client/v3/login", body)
            self.assertMatrixError(resp, code, errcode)

    async def test_password_rehashed_when_parameters_change(self) -> None:
        await self.register("gina")
        old_hash = Argon2(time_cost=2, memory_cost=16, parallelism=1).hash(TEST_PASSWORD)
        await self.hs.stores.users.set_password_hash("@gina:test.local", old_hash, 0)
        resp = await self.login("gina")
        self.assertEqual(resp.code, 200)
        user = await self.hs.stores.users.get_user("@gina:test.local")
        self.assertNotEqual(user.password_hash, old_hash)
        self.assertIn("m=8,t=1,p=1", user.password_hash)
        self.assertEqual((await self.login("gina")).code, 200)

    async def test_no_password_or_token_in_logs_or_events(self) -> None:
        captured: list[str] = []

        class Grab(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                captured.append(record.getMessage() + repr(vars(record)))

        handler = Grab(level=logging.DEBUG)
        root = logging.getLogger()
        old_level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(handler)
        try:
            body = await self.register("henry", refresh_token=True)
            await self.login("henry", "wrong-password-xyz")
            resp = await self.login("henry", refresh_token=True)
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
        secrets = [TEST_PASSWORD, "wrong-password-xyz", body["access_token"], body["refresh_token"],
                   resp.json["access_token"], resp.json["refresh_token"]]
        text = "\n".join(captured)
        events = await self.hs.stores.security_events.list_events(user_id="@henry:test.local")
        text += repr(events)
        self.assertTrue(events)
        for secret in secrets:
            self.assertNotIn(secret, text)


class LogoutTest(HomeserverTestCase):
    async def test_logout_revokes_token_and_deletes_device(self) -> None:
        reg = await self.register("ivan")
        other = await self.login("ivan")
        resp = await self.request("POST", "/_matrix/client/v3/logout", token=reg["access_token"])
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.json, {})
        again = await self.request("GET", WHOAMI, token=reg["access_token"])
        self.assertMatrixError(again, 401, "M_UNKNOWN_TOKEN")
        self.assertFalse(again.json["soft_logout"])
        devices = await self.request("GET", "/_matrix/client/v3/devices",
                                     token=other.json["access_token"])
        self.assertEqual([d["device_id"] for d in devices.json["devices"]],
                         [other.json["device_id"]])

    async def test_logout_all(self) -> None:
        reg = await self.register("judy")
        other = await self.login("judy")
        resp = await self.request("POST", "/_matrix/client/v3/logout/all",
                                  token=other.json["access_token"])
        self.assertEqual(resp.code, 200)
        for token in (reg["access_token"], other.json["access_token"]):
            self.assertMatrixError(await self.request("GET", WHOAMI, token=token),
                                   401, "M_UNKNOWN_TOKEN")
        fresh = await self.login("judy")
        devices = await self.request("GET", "/_matrix/client/v3/devices",
                                     token=fresh.json["access_token"])
        self.assertEqual(len(devices.json["devices"]), 1)

    async def test_logout_needs_token(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/logout")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("POST", "/_matrix/client/v3/logout/all", token="garbage")
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_token_in_query_string_and_bad_header(self) -> None:
        reg = await self.register("kate")
        resp = await self.request("GET", WHOAMI + "?access_token=" + reg["access_token"])
        self.assertEqual(resp.code, 200)
        resp = await self.request("GET", WHOAMI, headers={"Authorization": "Basic abc"})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
