"""Issue 12: SyTest's registration and device-management cases, over HTTP.

Each test names the SyTest test (matrix-org/sytest) it reproduces; the others check
that remembering parameters and idempotent completion never give more than the
original request did.
"""

from __future__ import annotations

import json
from typing import Any

from tests.harness import TEST_PASSWORD, HomeserverTestCase

CS = "/_matrix/client/v3"
R0 = "/_matrix/client/r0"
REGISTER = f"{R0}/register"


def dummy(session: str) -> dict[str, Any]:
    return {"type": "m.login.dummy", "session": session}


class SyTestRegisterTest(HomeserverTestCase):
    async def start(self, body: dict[str, Any]) -> str:
        first = await self.request("POST", REGISTER, body)
        self.assertEqual(first.code, 401, first)
        return str(first.json["session"])

    async def whoami(self, token: str) -> dict[str, Any]:
        who = await self.request("GET", f"{CS}/account/whoami", token=token)
        self.assertEqual(who.code, 200, who)
        return dict(who.json)

    # tests/10apidoc/01register.pl
    async def test_post_register_downcases_capitals_in_usernames(self) -> None:
        resp = await self.request("POST", REGISTER, {
            "auth": {"type": "m.login.dummy"}, "username": "user-UPPER",
            "password": TEST_PASSWORD})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@user-upper:test.local")
        self.assertEqual((await self.whoami(resp.json["access_token"]))["user_id"],
                         "@user-upper:test.local")
        taken = await self.request("POST", REGISTER, {
            "auth": {"type": "m.login.dummy"}, "username": "USER-upper",
            "password": TEST_PASSWORD})
        self.assertMatrixError(taken, 400, "M_USER_IN_USE")
        # Characters that are not upper-case letters are still refused.
        for name in ("user-É", "us!er"):
            bad = await self.request("POST", REGISTER, {
                "auth": {"type": "m.login.dummy"}, "username": name,
                "password": TEST_PASSWORD})
            self.assertMatrixError(bad, 400, "M_INVALID_USERNAME")

    # tests/11register.pl
    async def test_registration_is_idempotent_without_username_specified(self) -> None:
        session = await self.start({"password": TEST_PASSWORD})
        body = {"password": TEST_PASSWORD, "auth": dummy(session)}
        first = await self.request("POST", REGISTER, body)
        self.assertEqual(first.code, 200, first)
        again = await self.request("POST", REGISTER, body)
        self.assertEqual(again.code, 200, again)
        self.assertEqual(again.json["user_id"], first.json["user_id"])
        self.assertEqual(again.json["home_server"], "test.local")
        # Like Synapse, the repeat logs in a new device of the same account.
        self.assertNotEqual(again.json["device_id"], first.json["device_id"])
        self.assertEqual((await self.whoami(again.json["access_token"]))["user_id"],
                         first.json["user_id"])

    # tests/11register.pl
    async def test_registration_is_idempotent_with_username_specified(self) -> None:
        body: dict[str, Any] = {"username": "idem", "password": TEST_PASSWORD}
        session = await self.start(body)
        body["auth"] = dummy(session)
        first = await self.request("POST", REGISTER, body)
        self.assertEqual(first.code, 200, first)
        again = await self.request("POST", REGISTER, body)
        self.assertEqual(again.code, 200, again)
        self.assertEqual(again.json["user_id"], "@idem:test.local")
        self.assertIn("access_token", again.json)

    # tests/11register.pl
    async def test_registration_remembers_parameters(self) -> None:
        session = await self.start({
            "username": "remembered", "password": TEST_PASSWORD, "device_id": "xyzzy",
            "initial_device_display_name": "display_name"})
        resp = await self.request("POST", REGISTER, {"auth": dummy(session)})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@remembered:test.local")
        self.assertEqual(resp.json["device_id"], "xyzzy")
        dev = await self.request("GET", f"{R0}/devices/xyzzy", token=resp.json["access_token"])
        self.assertEqual(dev.code, 200, dev)
        self.assertEqual(dev.json["display_name"], "display_name")
        # The remembered password is the account's password.
        self.assertEqual((await self.login("remembered")).code, 200)

    # tests/11register.pl
    async def test_registration_accepts_non_ascii_passwords(self) -> None:
        session = await self.start({
            "username": "nonascii", "password": "übers3kr1t", "device_id": "xyzzy",
            "initial_device_display_name": "display_name"})
        resp = await self.request("POST", REGISTER, {"auth": dummy(session)})
        self.assertEqual(resp.code, 200, resp)
        self.assertIn("access_token", resp.json)
        self.assertEqual((await self.login("nonascii", "übers3kr1t")).code, 200)
        self.assertEqual((await self.login("nonascii", "ubers3kr1t")).code, 403)

    # tests/11register.pl
    async def test_registration_with_inhibit_login_inhibits_login(self) -> None:
        session = await self.start({"username": "inhibited", "password": TEST_PASSWORD,
                                    "inhibit_login": True})
        resp = await self.request("POST", REGISTER, {"auth": dummy(session)})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"user_id": "@inhibited:test.local",
                                     "home_server": "test.local"})
        devices = await self.hs.stores.devices.list_devices("@inhibited:test.local")
        self.assertEqual(devices, [])

    # The safety of remembering and of idempotent completion.

    async def test_the_password_is_remembered_only_as_a_hash(self) -> None:
        session = await self.start({"username": "hashed", "password": TEST_PASSWORD})
        stored = await self.hs.stores.ui_auth.get(session)
        assert stored is not None
        self.assertNotIn(TEST_PASSWORD, json.dumps(stored.serverdict))
        self.assertTrue(stored.serverdict["password_hash"].startswith("$argon2"))
        # A weak password is refused before anything is remembered.
        weak = await self.request("POST", REGISTER, {"username": "weakling", "password": "x"})
        self.assertMatrixError(weak, 400, "M_WEAK_PASSWORD")

    async def test_parameters_sent_again_replace_the_remembered_ones(self) -> None:
        session = await self.start({"username": "firstname", "password": TEST_PASSWORD})
        resp = await self.request("POST", REGISTER, {
            "username": "secondname", "auth": dummy(session)})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@secondname:test.local")
        self.assertFalse(await self.hs.stores.users.user_exists("@firstname:test.local"))

    async def test_remembered_username_is_checked_again_on_completion(self) -> None:
        session = await self.start({"username": "raced", "password": TEST_PASSWORD})
        await self.register("raced")
        resp = await self.request("POST", REGISTER, {"auth": dummy(session)})
        self.assertMatrixError(resp, 400, "M_USER_IN_USE")

    async def test_repeat_needs_the_password_to_get_tokens(self) -> None:
        session = await self.start({"username": "guarded", "password": TEST_PASSWORD})
        done = await self.request("POST", REGISTER, {"auth": dummy(session)})
        self.assertEqual(done.code, 200, done)
        # The session id alone no longer logs anyone in to the account.
        bare = await self.request("POST", REGISTER, {"auth": dummy(session)})
        self.assertMatrixError(bare, 400, "M_UNKNOWN")
        wrong = await self.request("POST", REGISTER, {
            "username": "guarded", "password": "not-the-password", "auth": dummy(session)})
        self.assertMatrixError(wrong, 403, "M_FORBIDDEN")
        self.assertNotIn("access_token", wrong.json)
        # Without tokens asked for, the repeat just names the account.
        quiet = await self.request("POST", REGISTER, {"inhibit_login": True,
                                                      "auth": dummy(session)})
        self.assertEqual(quiet.code, 200, quiet)
        self.assertEqual(quiet.json, {"user_id": "@guarded:test.local",
                                      "home_server": "test.local"})
        self.assertEqual(len(await self.hs.stores.devices.list_devices("@guarded:test.local")),
                         1)

    async def test_repeat_with_another_username_creates_nothing(self) -> None:
        body: dict[str, Any] = {"username": "once", "password": TEST_PASSWORD}
        body["auth"] = dummy(await self.start(body))
        self.assertEqual((await self.request("POST", REGISTER, body)).code, 200)
        other = await self.request("POST", REGISTER, {**body, "username": "twice"})
        self.assertMatrixError(other, 400, "M_UNKNOWN")
        self.assertFalse(await self.hs.stores.users.user_exists("@twice:test.local"))

    async def test_repeat_of_a_deactivated_account_gets_no_tokens(self) -> None:
        body: dict[str, Any] = {"username": "gone", "password": TEST_PASSWORD}
        body["auth"] = dummy(await self.start(body))
        done = await self.request("POST", REGISTER, body)
        self.assertEqual(done.code, 200, done)
        token = done.json["access_token"]
        first = await self.request("POST", f"{CS}/account/deactivate", {}, token=token)
        deact = await self.request("POST", f"{CS}/account/deactivate", {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "password": TEST_PASSWORD, "identifier": {"type": "m.id.user", "user": "gone"}}},
            token=token)
        self.assertEqual(deact.code, 200, deact)
        again = await self.request("POST", REGISTER, body)
        self.assertMatrixError(again, 403, "M_FORBIDDEN")

    async def test_repeat_after_the_session_lifetime_is_refused(self) -> None:
        body: dict[str, Any] = {"username": "late", "password": TEST_PASSWORD}
        body["auth"] = dummy(await self.start(body))
        self.assertEqual((await self.request("POST", REGISTER, body)).code, 200)
        self.advance(3601)
        again = await self.request("POST", REGISTER, body)
        self.assertMatrixError(again, 400, "M_USER_IN_USE")
        again = await self.request("POST", REGISTER, {"password": TEST_PASSWORD,
                                                      "auth": body["auth"]})
        self.assertMatrixError(again, 400, "M_UNKNOWN")
        # The clean-up forgets the record along with the sessions of its age.
        await self.hs.stores.ui_auth.delete_expired(self.clock.time_msec() - 3600 * 1000)
        session = body["auth"]["session"]
        self.assertIsNone(await self.hs.stores.ui_auth.registered_user(session, 0))


class SyTestDeviceManagementTest(HomeserverTestCase):
    # tests/10apidoc/12device_management.pl
    async def test_delete_device_requires_ui_auth_user_to_match_device_owner(self) -> None:
        alice = await self.register("alice")
        await self.register("eve")
        login = await self.login("alice", device_id="login_device",
                                 initial_device_display_name="device display")
        self.assertEqual(login.code, 200, login)
        path = f"{R0}/devices/login_device"
        stolen = alice["access_token"]
        first = await self.request("DELETE", path, {}, token=stolen)
        self.assertEqual(first.code, 401, first)
        eve_auth = {"type": "m.login.password", "user": "@eve:test.local",
                    "password": TEST_PASSWORD}
        resp = await self.request("DELETE", path, {"auth": eve_auth}, token=stolen)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Also within a session, and whether or not Eve's password is right.
        resp = await self.request("DELETE", path, {"auth": {
            **eve_auth, "password": "wrong-password", "session": first.json["session"]}},
            token=stolen)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        still = await self.request("GET", path, token=stolen)
        self.assertEqual(still.code, 200, still)
        ok = await self.request("DELETE", path, {"auth": {
            "type": "m.login.password", "user": "@alice:test.local",
            "password": TEST_PASSWORD}}, token=stolen)
        self.assertEqual(ok.code, 200, ok)
        gone = await self.request("GET", path, token=stolen)
        self.assertMatrixError(gone, 404, "M_NOT_FOUND")


class SyTestGuestUpgradeTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"registration": {"allow_guests": True}}

    async def guest(self) -> tuple[str, str]:
        resp = await self.request("POST", f"{REGISTER}?kind=guest", {})
        self.assertEqual(resp.code, 200, resp)
        return resp.json["user_id"], resp.json["access_token"]

    # tests/30rooms/13guestaccess.pl
    async def test_guest_user_can_upgrade_to_fully_featured_user(self) -> None:
        user_id, guest_token = await self.guest()
        localpart = user_id[1:].split(":")[0]
        body: dict[str, Any] = {"username": localpart, "password": TEST_PASSWORD,
                                "guest_access_token": guest_token}
        first = await self.request("POST", REGISTER, body)
        self.assertEqual(first.code, 401, first)
        body["auth"] = {"type": "m.login.dummy"}
        resp = await self.request("POST", REGISTER, body)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], user_id)
        token = resp.json["access_token"]
        who = await self.request("GET", f"{CS}/account/whoami", token=token)
        self.assertEqual(who.json["is_guest"], False)
        room = await self.request("POST", f"{CS}/createRoom", {}, token=token)
        self.assertEqual(room.code, 200, room)
        self.assertEqual((await self.login(localpart)).code, 200)
        # The guest's own token keeps the guest's limits.
        devices = await self.request("GET", f"{CS}/devices", token=guest_token)
        self.assertMatrixError(devices, 403, "M_GUEST_ACCESS_FORBIDDEN")
        # Upgraded once: the guest token no longer upgrades anything.
        again = await self.request("POST", REGISTER, {
            "username": localpart, "password": TEST_PASSWORD,
            "guest_access_token": guest_token, "auth": {"type": "m.login.dummy"}})
        self.assertMatrixError(again, 403, "M_FORBIDDEN")

    # tests/30rooms/13guestaccess.pl
    async def test_guest_user_cannot_upgrade_other_users(self) -> None:
        first_id, _ = await self.guest()
        _, other_token = await self.guest()
        await self.register("fulluser")
        member = (await self.login("fulluser")).json["access_token"]
        for username, token in ((first_id[1:].split(":")[0], other_token),
                                ("fulluser", other_token),
                                ("fulluser", member), ("newname", other_token),
                                (first_id[1:].split(":")[0], "not-a-token")):
            resp = await self.request("POST", REGISTER, {
                "username": username, "password": TEST_PASSWORD,
                "guest_access_token": token, "auth": {"type": "m.login.dummy"}})
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        record = await self.hs.stores.users.get_user(first_id)
        assert record is not None
        self.assertTrue(record.is_guest)
        self.assertIsNone(record.password_hash)
        self.assertFalse(await self.hs.stores.users.user_exists("@newname:test.local"))


class TokenGatedRememberTest(HomeserverTestCase):
    """Remembering a password costs an Argon2 hash: on a token-gated server, only once
    the client has completed the token stage."""

    def config_overrides(self) -> dict:
        return {"registration": {"requires_token": True}}

    async def test_no_hash_before_the_token_stage(self) -> None:
        await self.hs.stores.registration_tokens.create("tok", 1, None, self.clock.time_msec())
        first = await self.request("POST", REGISTER, {"username": "gated",
                                                      "password": TEST_PASSWORD})
        self.assertEqual(first.code, 401, first)
        session = first.json["session"]
        stored = await self.hs.stores.ui_auth.get(session)
        assert stored is not None
        self.assertNotIn("password_hash", stored.serverdict)
        bad = await self.request("POST", REGISTER, {"password": TEST_PASSWORD, "auth": {
            "type": "m.login.registration_token", "token": "wrong", "session": session}})
        self.assertEqual(bad.code, 401, bad)
        stored = await self.hs.stores.ui_auth.get(session)
        assert stored is not None
        self.assertNotIn("password_hash", stored.serverdict)
        # Completing the token stage in a request without the password: remembered
        # username, but no password yet.
        staged = await self.request("POST", REGISTER, {"auth": {
            "type": "m.login.registration_token", "token": "tok", "session": session}})
        self.assertMatrixError(staged, 400, "M_MISSING_PARAM")
        done = await self.request("POST", REGISTER, {"password": TEST_PASSWORD,
                                                     "auth": {"session": session}})
        self.assertEqual(done.code, 200, done)
        self.assertEqual(done.json["user_id"], "@gated:test.local")
