"""The users admin API: each endpoint, the effects of lock / suspend / forced password
reset on the user's own requests, the least-privilege rules, and the audit entries."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.harness import TEST_PASSWORD, HomeserverTestCase

SA = "/_synapse/admin"
PA = "/_parley/admin/v1"
NEW_PASSWORD = "Another-Good-Passw0rd!"


def u(user_id: str) -> str:
    return quote(user_id, safe="")


class AdminUsersTest(HomeserverTestCase):
    async def _setup(self) -> None:
        self.admin = (await self.register("ada"))["access_token"]
        await self.hs.stores.roles.set_role("@ada:test.local", "admin")
        self.bob = await self.register("bob")
        self.bob_token = self.bob["access_token"]

    async def _as_role(self, name: str, role: str) -> str:
        token = (await self.register(name))["access_token"]
        await self.hs.stores.roles.set_role(f"@{name}:test.local", role)
        return token

    async def _actions(self) -> list[tuple[str | None, str | None, Any]]:
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        return [(e.user_id, e.details.get("user_id"), e.details.get("action"))
                for e in events if e.outcome == "success"]

    async def test_list_search_and_paginate(self) -> None:
        await self._setup()
        for name in ("pag_a", "pag_b", "pag_c", "pagxd"):
            await self.register(name)
        q = f"{SA}/v2/users?name=pag_&limit=2"  # "_" is literal, not a LIKE wildcard
        resp = await self.request("GET", q, token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["total"], 3)
        self.assertEqual([x["name"] for x in resp.json["users"]],
                         ["@pag_a:test.local", "@pag_b:test.local"])
        self.assertEqual(resp.json["next_token"], "2")
        page2 = await self.request("GET", q + "&from=2", token=self.admin)
        self.assertEqual([x["name"] for x in page2.json["users"]], ["@pag_c:test.local"])
        self.assertNotIn("next_token", page2.json)
        everyone = await self.request("GET", f"{SA}/v2/users", token=self.admin)
        self.assertGreaterEqual(everyone.json["total"], 6)
        found = await self.request("GET", f"{SA}/v2/users?name=PAGX", token=self.admin)
        self.assertEqual([x["name"] for x in found.json["users"]], ["@pagxd:test.local"])
        desc = await self.request("GET", f"{SA}/v2/users?name=pag&dir=b&limit=1",
                                  token=self.admin)
        self.assertEqual(desc.json["users"][0]["name"], "@pagxd:test.local")
        for bad in ("limit=0", "limit=100000", "from=-1", "order_by=password_hash", "dir=x"):
            resp = await self.request("GET", f"{SA}/v2/users?{bad}", token=self.admin)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        await self.register("erin")
        # Deactivated users are hidden unless asked for.
        await self.request("POST", f"{SA}/v1/deactivate/{u('@erin:test.local')}", {},
                           token=self.admin)
        resp = await self.request("GET", f"{SA}/v2/users?name=erin", token=self.admin)
        self.assertEqual(resp.json["users"], [])
        resp = await self.request("GET", f"{SA}/v2/users?name=erin&deactivated=true",
                                  token=self.admin)
        self.assertTrue(resp.json["users"][0]["deactivated"])

    async def test_details_create_modify(self) -> None:
        await self._setup()
        resp = await self.request("GET", f"{SA}/v2/users/{u('@bob:test.local')}",
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["name"], "@bob:test.local")
        self.assertFalse(resp.json["admin"])
        self.assertNotIn("password_hash", resp.json)
        resp = await self.request("GET", f"{SA}/v2/users/{u('@nobody:test.local')}",
                                  token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{SA}/v2/users/{u('@x:elsewhere.org')}",
                                  token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        created = await self.request("PUT", f"{SA}/v2/users/{u('@newbie:test.local')}",
                                     {"password": NEW_PASSWORD, "displayname": "Newbie"},
                                     token=self.admin)
        self.assertEqual(created.code, 201, created)
        self.assertEqual(created.json["displayname"], "Newbie")
        self.assertEqual((await self.login("newbie", NEW_PASSWORD)).code, 200)
        modified = await self.request("PUT", f"{SA}/v2/users/{u('@newbie:test.local')}",
                                      {"displayname": "Renamed", "locked": True},
                                      token=self.admin)
        self.assertEqual(modified.code, 200, modified)
        self.assertTrue(modified.json["locked"])
        self.assertEqual(modified.json["displayname"], "Renamed")
        bad = await self.request("PUT", f"{SA}/v2/users/{u('@newbie:test.local')}",
                                 {"password_hash": "x"}, token=self.admin)
        self.assertMatrixError(bad, 400, "M_BAD_JSON")
        actions = await self._actions()
        self.assertIn(("@ada:test.local", "@newbie:test.local", "create_user"), actions)
        self.assertIn(("@ada:test.local", "@newbie:test.local", "modify_user"), actions)

    async def test_lock_refuses_tokens_and_login(self) -> None:
        await self._setup()
        bob = "@bob:test.local"
        resp = await self.request("PUT", f"/_matrix/client/v1/admin/lock/{u(bob)}",
                                  {"locked": True}, token=self.admin)
        self.assertEqual(resp.json, {"locked": True})
        resp = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                  token=self.bob_token)
        self.assertMatrixError(resp, 401, "M_USER_LOCKED")
        self.assertIs(resp.json["soft_logout"], True)
        login = await self.login("bob")
        self.assertMatrixError(login, 401, "M_USER_LOCKED")
        got = await self.request("GET", f"/_matrix/client/v1/admin/lock/{u(bob)}",
                                 token=self.admin)
        self.assertEqual(got.json, {"locked": True})
        await self.request("PUT", f"/_matrix/client/v1/admin/lock/{u(bob)}",
                           {"locked": False}, token=self.admin)
        resp = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                  token=self.bob_token)
        self.assertEqual(resp.code, 200, resp)
        actions = await self._actions()
        self.assertIn(("@ada:test.local", bob, "lock_user"), actions)
        self.assertIn(("@ada:test.local", bob, "unlock_user"), actions)

    async def test_lock_and_revoke_is_one_call(self) -> None:
        await self._setup()
        mod = await self._as_role("mona", "moderator")
        resp = await self.request("POST", f"{PA}/users/{u('@bob:test.local')}/lock_and_revoke",
                                  token=mod)
        self.assertEqual(resp.code, 200, resp)
        await self.request("PUT", f"/_matrix/client/v1/admin/lock/{u('@bob:test.local')}",
                           {"locked": False}, token=mod)
        # Unlocked, but the sessions stay revoked.
        resp = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                  token=self.bob_token)
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_suspension_is_read_only(self) -> None:
        await self._setup()
        room = await self.request("POST", "/_matrix/client/v3/createRoom",
                                  {"preset": "public_chat"}, token=self.bob_token)
        room_id = quote(room.json["room_id"])
        resp = await self.request("PUT", f"/_matrix/client/v1/admin/suspend/"
                                  f"{u('@bob:test.local')}", {"suspended": True},
                                  token=self.admin)
        self.assertEqual(resp.json, {"suspended": True})
        send = await self.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/"
                                  "m.room.message/t1", {"msgtype": "m.text", "body": "hi"},
                                  token=self.bob_token)
        self.assertMatrixError(send, 403, "M_USER_SUSPENDED")
        create = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                    token=self.bob_token)
        self.assertMatrixError(create, 403, "M_USER_SUSPENDED")
        profile = await self.request(
            "PUT", f"/_matrix/client/v3/profile/{u('@bob:test.local')}/displayname",
            {"displayname": "B"}, token=self.bob_token)
        self.assertMatrixError(profile, 403, "M_USER_SUSPENDED")
        # Reading and leaving still work.
        sync = await self.request("GET", "/_matrix/client/v3/sync", token=self.bob_token)
        self.assertEqual(sync.code, 200, sync)
        msgs = await self.request("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b",
                                  token=self.bob_token)
        self.assertEqual(msgs.code, 200, msgs)
        leave = await self.request("POST", f"/_matrix/client/v3/rooms/{room_id}/leave", {},
                                   token=self.bob_token)
        self.assertEqual(leave.code, 200, leave)
        # Synapse's path unsuspends.
        resp = await self.request("PUT", f"{SA}/v1/suspend/{u('@bob:test.local')}",
                                  {"suspend": False}, token=self.admin)
        self.assertEqual(resp.json, {"user_@bob:test.local_suspended": False})
        create = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                    token=self.bob_token)
        self.assertEqual(create.code, 200, create)

    async def test_force_password_reset_then_support_resets(self) -> None:
        await self._setup()
        support = await self._as_role("sam", "support")
        resp = await self.request("POST",
                                  f"{PA}/users/{u('@bob:test.local')}/force_password_reset",
                                  token=support)
        self.assertEqual(resp.code, 200, resp)
        login = await self.login("bob")
        self.assertMatrixError(login, 403, "ORG_PARLEY_PASSWORD_RESET_REQUIRED")
        wrong = await self.login("bob", "wrong-password-123")
        self.assertMatrixError(wrong, 403, "M_FORBIDDEN")  # no state leak on a bad password
        resp = await self.request("POST", f"{SA}/v1/reset_password/{u('@bob:test.local')}",
                                  {"new_password": NEW_PASSWORD}, token=support)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.login("bob", NEW_PASSWORD)).code, 200)
        self.assertMatrixError(await self.login("bob", TEST_PASSWORD), 403, "M_FORBIDDEN")
        actions = await self._actions()
        self.assertIn(("@sam:test.local", "@bob:test.local", "force_password_reset"), actions)
        self.assertIn(("@sam:test.local", "@bob:test.local", "reset_password"), actions)

    async def test_devices_and_joined_rooms(self) -> None:
        await self._setup()
        bob = u("@bob:test.local")
        room = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.bob_token)
        rooms = await self.request("GET", f"{SA}/v1/users/{bob}/joined_rooms", token=self.admin)
        self.assertEqual(rooms.json, {"joined_rooms": [room.json["room_id"]], "total": 1})
        devs = await self.request("GET", f"{SA}/v2/users/{bob}/devices", token=self.admin)
        self.assertEqual(devs.json["total"], 1)
        self.assertEqual(devs.json["devices"][0]["device_id"], self.bob["device_id"])
        one = await self.request("GET", f"{SA}/v2/users/{bob}/devices/{self.bob['device_id']}",
                                 token=self.admin)
        self.assertEqual(one.json["user_id"], "@bob:test.local")
        missing = await self.request("GET", f"{SA}/v2/users/{bob}/devices/NOPE",
                                     token=self.admin)
        self.assertMatrixError(missing, 404, "M_NOT_FOUND")
        gone = await self.request("DELETE",
                                  f"{SA}/v2/users/{bob}/devices/{self.bob['device_id']}",
                                  token=self.admin)
        self.assertEqual(gone.code, 200, gone)
        resp = await self.request("GET", "/_matrix/client/v3/account/whoami",
                                  token=self.bob_token)
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_deactivate_with_erase(self) -> None:
        await self._setup()
        resp = await self.request("POST", f"{SA}/v1/deactivate/{u('@bob:test.local')}",
                                  {"erase": True}, token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        details = await self.request("GET", f"{SA}/v2/users/{u('@bob:test.local')}",
                                     token=self.admin)
        self.assertTrue(details.json["deactivated"])
        self.assertTrue(details.json["erased"])
        self.assertIn(("@ada:test.local", "@bob:test.local", "deactivate_user"),
                      await self._actions())

    async def test_least_privilege_rules(self) -> None:
        await self._setup()
        mod = await self._as_role("mona", "moderator")
        await self._as_role("otto", "moderator")
        support = await self._as_role("sam", "support")
        # A moderator cannot lock another staff member or an admin.
        for target in ("@otto:test.local", "@ada:test.local"):
            resp = await self.request("PUT", f"/_matrix/client/v1/admin/lock/{u(target)}",
                                      {"locked": True}, token=mod)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Support cannot reset an admin's password (account takeover).
        resp = await self.request("POST", f"{SA}/v1/reset_password/{u('@ada:test.local')}",
                                  {"new_password": NEW_PASSWORD}, token=support)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Only admin grants roles; nobody changes their own.
        resp = await self.request("PUT", f"{PA}/users/{u('@bob:test.local')}/role",
                                  {"role": "moderator"}, token=mod)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("PUT", f"{PA}/users/{u('@ada:test.local')}/role",
                                  {"role": None}, token=self.admin)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("PUT", f"{PA}/users/{u('@bob:test.local')}/role",
                                  {"role": "wizard"}, token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", f"{PA}/users/{u('@bob:test.local')}/role",
                                  {"role": "auditor"}, token=self.admin)
        self.assertEqual(resp.json["role"], "auditor")
        audit = await self.request("GET", f"{PA}/audit", token=self.bob_token)
        self.assertEqual(audit.code, 200, audit)
        entries = [e for e in audit.json["entries"]
                   if (e.get("details") or {}).get("action") == "set_role"]
        self.assertEqual(entries[0]["details"]["new_role"], "auditor")
        resp = await self.request("PUT", f"{PA}/users/{u('@bob:test.local')}/role",
                                  {"role": "none"}, token=self.admin)
        self.assertIsNone(resp.json["role"])
        audit = await self.request("GET", f"{PA}/audit", token=self.bob_token)
        self.assertMatrixError(audit, 403, "M_FORBIDDEN")
        # Granting admin keeps the legacy flag in step.
        await self.request("PUT", f"{PA}/users/{u('@bob:test.local')}/role", {"role": "admin"},
                           token=self.admin)
        user = await self.hs.stores.users.get_user("@bob:test.local")
        assert user is not None
        self.assertTrue(user.is_admin)

    async def test_no_content_or_keys_in_answers(self) -> None:
        await self._setup()
        room = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.bob_token)
        await self.request("PUT", f"/_matrix/client/v3/rooms/{quote(room.json['room_id'])}/send/"
                           "m.room.message/t1", {"msgtype": "m.text", "body": "SECRET-BODY"},
                           token=self.bob_token)
        bob = u("@bob:test.local")
        for path in (f"{SA}/v2/users", f"{SA}/v2/users/{bob}", f"{SA}/v2/users/{bob}/devices",
                     f"{SA}/v1/users/{bob}/joined_rooms"):
            resp = await self.request("GET", path, token=self.admin)
            self.assertEqual(resp.code, 200, resp)
            self.assertNotIn(b"SECRET-BODY", resp.raw)
            self.assertNotIn(b"argon2", resp.raw)
