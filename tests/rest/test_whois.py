"""GET /admin/whois/{userId}: self or server admin only."""

from __future__ import annotations

from urllib.parse import quote

from tests.harness import HomeserverTestCase

WHOIS = "/_matrix/client/v3/admin/whois/"


def path(user_id: str, base: str = WHOIS) -> str:
    return base + quote(user_id, safe="")


class WhoisTest(HomeserverTestCase):
    async def test_self_lookup_lists_devices_with_last_seen(self) -> None:
        reg = await self.register("wendy")
        # A second device, logged in with a known user agent, that makes no further
        # requests (so its last-seen values are exactly the login's).
        login_ms = self.clock.time_msec()
        other = await self.request("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "wendy"},
            "password": "correct-horse-battery"}, headers={"User-Agent": "WhoisTest/1.0"})
        self.assertEqual(other.code, 200, other)
        resp = await self.request("GET", path("@wendy:test.local"), token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@wendy:test.local")
        devices = resp.json["devices"]
        self.assertEqual(set(devices), {reg["device_id"], other.json["device_id"]})
        self.assertEqual(devices[other.json["device_id"]], {"sessions": [{"connections": [
            {"ip": "127.0.0.1", "last_seen": login_ms, "user_agent": "WhoisTest/1.0"}]}]})
        own = devices[reg["device_id"]]["sessions"]
        self.assertEqual(len(own), 1)
        self.assertEqual(len(own[0]["connections"]), 1)
        self.assertIsInstance(own[0]["connections"][0]["last_seen"], int)

    async def test_r0_and_synapse_admin_paths(self) -> None:
        reg = await self.register("wendy")
        for base in ("/_matrix/client/r0/admin/whois/", "/_synapse/admin/v1/whois/"):
            resp = await self.request("GET", path("@wendy:test.local", base),
                                      token=reg["access_token"])
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json["user_id"], "@wendy:test.local")

    async def test_other_user_forbidden_for_non_admin(self) -> None:
        reg = await self.register("wendy")
        await self.register("victor")
        for target in ("@victor:test.local", "@nobody:test.local", "@victor:elsewhere.org"):
            resp = await self.request("GET", path(target), token=reg["access_token"])
            # Same answer whether or not the account exists: no enumeration.
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        self.assertEqual([(e.outcome, e.user_id) for e in events],
                         [("failure", "@wendy:test.local")] * 3)

    async def test_admin_sees_other_users(self) -> None:
        admin = await self.register("ada")
        await self.hs.stores.users.set_admin("@ada:test.local", True)
        victor = await self.register("victor")
        resp = await self.request("GET", path("@victor:test.local"), token=admin["access_token"])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@victor:test.local")
        self.assertEqual(list(resp.json["devices"]), [victor["device_id"]])
        self.assertNotIn(admin["device_id"], resp.json["devices"])

    async def test_admin_unknown_and_remote_users(self) -> None:
        admin = await self.register("ada")
        await self.hs.stores.users.set_admin("@ada:test.local", True)
        resp = await self.request("GET", path("@nobody:test.local"), token=admin["access_token"])
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", path("@victor:elsewhere.org"), token=admin["access_token"])
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_user_without_devices(self) -> None:
        admin = await self.register("ada")
        await self.hs.stores.users.set_admin("@ada:test.local", True)
        await self.hs.stores.users.create_user("@quiet:test.local", None, self.clock.time_msec())
        resp = await self.request("GET", path("@quiet:test.local"), token=admin["access_token"])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"user_id": "@quiet:test.local", "devices": {}})

    async def test_revoked_admin_is_refused(self) -> None:
        admin = await self.register("ada")
        await self.register("victor")
        await self.hs.stores.users.set_admin("@ada:test.local", True)
        ok = await self.request("GET", path("@victor:test.local"), token=admin["access_token"])
        self.assertEqual(ok.code, 200)
        await self.hs.stores.users.set_admin("@ada:test.local", False)
        resp = await self.request("GET", path("@victor:test.local"), token=admin["access_token"])
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_malformed_user_id(self) -> None:
        reg = await self.register("wendy")
        for bad in ("wendy", "@wendy", "@:test.local"):
            resp = await self.request("GET", path(bad), token=reg["access_token"])
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_needs_token(self) -> None:
        await self.register("wendy")
        resp = await self.request("GET", path("@wendy:test.local"))
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", path("@wendy:test.local"), token="bogus")
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
