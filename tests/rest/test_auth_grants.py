"""Security review (issue 11) regressions on the token paths, at the HTTP level:

* tokens carry the privileges of the stored account (a guest stays a guest through
  /refresh; a deactivated account cannot refresh or start a session);
* guest sign-up only where guests are explicitly allowed;
* one-time grants (UIA sessions, registration-token uses) are spent exactly once, in the
  transaction that uses them, even under concurrent replays;
* /login checks the password before revealing that an account is deactivated.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from homeserver.http.errors import MatrixError
from tests.harness import TEST_PASSWORD, HomeserverTestCase, Response

CS = "/_matrix/client/v3"
REGISTER = f"{CS}/register"
TOKENS = "/_synapse/admin/v1/registration_tokens"
PARALLEL = 5


class GuestPrivilegeTest(HomeserverTestCase):
    """The review's set-up: guests allowed, sign-up otherwise gated by a token."""

    def config_overrides(self) -> dict:
        return {"registration": {"allow_guests": True, "requires_token": True}}

    async def _assert_guest(self, token: str) -> None:
        who = await self.request("GET", f"{CS}/account/whoami", token=token)
        self.assertEqual(who.code, 200, who)
        self.assertIs(who.json["is_guest"], True)
        room = await self.request("POST", f"{CS}/createRoom", {}, token=token)
        self.assertMatrixError(room, 403, "M_GUEST_ACCESS_FORBIDDEN")
        upload = await self.request("POST", "/_matrix/media/v3/upload", raw_body=b"x",
                                    headers={"Content-Type": "text/plain"}, token=token)
        self.assertMatrixError(upload, 403, "M_GUEST_ACCESS_FORBIDDEN")

    async def test_refreshed_guest_token_is_still_a_guest(self) -> None:
        reg = await self.request("POST", REGISTER + "?kind=guest", {"refresh_token": True})
        self.assertEqual(reg.code, 200, reg)
        await self._assert_guest(reg.json["access_token"])
        refresh_token = reg.json["refresh_token"]
        for _ in range(2):  # and stays one over further rotations
            new = await self.request("POST", f"{CS}/refresh", {"refresh_token": refresh_token})
            self.assertEqual(new.code, 200, new)
            await self._assert_guest(new.json["access_token"])
            refresh_token = new.json["refresh_token"]

    async def test_ordinary_sign_up_still_needs_the_token(self) -> None:
        resp = await self.request("POST", REGISTER, {"username": "g", "password": TEST_PASSWORD})
        self.assertEqual(resp.code, 401, resp)
        self.assertEqual(resp.json["flows"], [{"stages": ["m.login.registration_token"]}])


class GuestSignUpPolicyTest(HomeserverTestCase):
    """``registration.allow_guests`` (default off) is the only switch for guest sign-up."""

    async def _guest(self) -> Response:
        return await self.request("POST", REGISTER + "?kind=guest", {})

    async def test_refused_unless_explicitly_allowed(self) -> None:
        for registration in ({"enabled": False}, {"enabled": True, "requires_token": True},
                             {"enabled": True}):
            await self._restart({"registration": registration})
            resp = await self._guest()
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertEqual(resp.json["error"], "Guest access is disabled")
        # Explicitly enabled: allowed even with ordinary registration closed.
        await self._restart({"registration": {"enabled": False, "allow_guests": True}})
        resp = await self._guest()
        self.assertEqual(resp.code, 200, resp)
        closed = await self.request("POST", REGISTER, {"username": "x", "password": TEST_PASSWORD})
        self.assertMatrixError(closed, 403, "M_FORBIDDEN")

    async def _restart(self, overrides: dict[str, Any]) -> None:
        await self.tearDown()
        self.config_overrides = lambda: overrides  # type: ignore[method-assign]
        await self.setUp()


class DeactivatedAccountTokenTest(HomeserverTestCase):
    async def _deactivate_keeping_sessions(self, user_id: str, keep_hash: bool = False) -> None:
        """Deactivated in the users table only (as a concurrent deactivation, or an admin
        path that does not end sessions, would leave it)."""
        await self.hs.db.execute(
            "test_deactivate",
            "UPDATE users SET deactivated = ?" + ("" if keep_hash else ", password_hash = NULL")
            + " WHERE user_id = ?", True, user_id)

    async def test_deactivated_user_cannot_refresh(self) -> None:
        await self.register("dora")
        tokens = (await self.login("dora", refresh_token=True)).json
        await self._deactivate_keeping_sessions("@dora:test.local")
        resp = await self.request("POST", f"{CS}/refresh", {"refresh_token": tokens["refresh_token"]})
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
        # The session is over: the access token it had is dead too.
        who = await self.request("GET", f"{CS}/account/whoami", token=tokens["access_token"])
        self.assertMatrixError(who, 401, "M_UNKNOWN_TOKEN")

    async def test_only_the_right_password_learns_of_deactivation(self) -> None:
        await self.register("dave")
        await self._deactivate_keeping_sessions("@dave:test.local", keep_hash=True)
        wrong = await self.login("dave", "not-the-password")
        unknown = await self.login("nobody-here", "not-the-password")
        self.assertMatrixError(wrong, 403, "M_FORBIDDEN")
        self.assertEqual(wrong.json, unknown.json)
        right = await self.login("dave")
        self.assertMatrixError(right, 403, "M_USER_DEACTIVATED")
        devices = await self.hs.stores.devices.list_devices("@dave:test.local")
        self.assertEqual(len(devices), 1)  # only the one registration made

    async def test_deactivated_through_the_api_looks_like_a_wrong_password(self) -> None:
        reg = await self.register("erin")
        first = await self.request("POST", f"{CS}/account/deactivate", {}, token=reg["access_token"])
        done = await self.request("POST", f"{CS}/account/deactivate", {"auth": {
            "type": "m.login.password", "session": first.json["session"], "password": TEST_PASSWORD,
            "identifier": {"type": "m.id.user", "user": "erin"}}}, token=reg["access_token"])
        self.assertEqual(done.code, 200, done)
        for password in (TEST_PASSWORD, "wrong-password"):
            self.assertMatrixError(await self.login("erin", password), 403, "M_FORBIDDEN")

    async def test_every_login_costs_one_hash(self) -> None:
        """Unknown, foreign and deactivated users cost the same Argon2 work as real ones."""
        await self.register("hugo")
        await self.register("ivy")
        await self._deactivate_keeping_sessions("@ivy:test.local")
        calls = self.count_password_hashes()
        for user in ("hugo", "nobody", "@someone:elsewhere.example", "ivy"):
            calls.clear()
            resp = await self.login(user, "wrong-password")
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertEqual(len(calls), 1, user)


class OneTimeGrantTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"registration": {"requires_token": True}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        self.admin = (await self.login("admin")).json["access_token"]

    async def new_token(self, uses_allowed: int | None) -> str:
        resp = await self.request("POST", f"{TOKENS}/new", {"uses_allowed": uses_allowed},
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["token"]

    async def token_counts(self, token: str) -> tuple[int, int]:
        info = await self.request("GET", f"{TOKENS}/{token}", token=self.admin)
        return info.json["pending"], info.json["completed"]

    async def parallel(self, bodies: list[dict[str, Any]], path: str = REGISTER,
                       token: str | None = None) -> list[Response]:
        return await defer.gatherResults([
            defer.ensureDeferred(self.request("POST", path, body, token=token)) for body in bodies
        ])

    async def completed_session(self, token: str) -> str:
        """The review's reproduction: the token stage completes in a request that then
        fails (no password), leaving a completed UIA session."""
        first = await self.request("POST", REGISTER, {"username": "racer0"})
        session = first.json["session"]
        failed = await self.request("POST", REGISTER, {"username": "racer0", "auth": {
            "type": "m.login.registration_token", "token": token, "session": session}})
        self.assertMatrixError(failed, 400, "M_MISSING_PARAM")
        return session

    async def test_single_use_token_registers_one_account_under_parallel_replay(self) -> None:
        token = await self.new_token(1)
        session = await self.completed_session(token)
        results = await self.parallel([
            {"username": f"racer{i}", "password": TEST_PASSWORD, "auth": {"session": session}}
            for i in range(PARALLEL)
        ])
        codes = sorted(r.code for r in results)
        self.assertEqual(codes, [200] + [400] * (PARALLEL - 1), results)
        for r in results:
            if r.code == 400:
                self.assertEqual(r.json["errcode"], "M_UNKNOWN", r)
        created = [i for i in range(PARALLEL)
                   if await self.hs.stores.users.user_exists(f"@racer{i}:test.local")]
        self.assertEqual(len(created), 1, created)
        self.assertEqual(await self.token_counts(token), (0, 1))
        # And the spent session cannot be used again later either.
        again = await self.request("POST", REGISTER, {
            "username": "late", "password": TEST_PASSWORD, "auth": {"session": session}})
        self.assertMatrixError(again, 400, "M_UNKNOWN")

    async def test_stage_completed_in_parallel_reserves_one_use(self) -> None:
        token = await self.new_token(3)
        first = await self.request("POST", REGISTER, {"username": "para"})
        session = first.json["session"]
        results = await self.parallel([
            {"username": "para", "auth": {"type": "m.login.registration_token", "token": token,
                                          "session": session}}
            for _ in range(PARALLEL)
        ])
        self.assertIn(400, [r.code for r in results], results)
        self.assertEqual(await self.token_counts(token), (1, 0))
        ok = await self.request("POST", REGISTER, {
            "username": "para", "password": TEST_PASSWORD, "auth": {"session": session}})
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(await self.token_counts(token), (0, 1))

    async def test_failed_account_creation_keeps_the_grant(self) -> None:
        """The session and the token use are spent in the account's transaction: if the
        account cannot be created, neither is spent."""
        token = await self.new_token(1)
        session = await self.completed_session(token)
        await self.hs.registration.create_account("taken", TEST_PASSWORD)
        with self.assertRaises(MatrixError):
            await self.hs.registration.create_account(
                "taken", TEST_PASSWORD,
                consume=self.hs.stores.ui_auth.consumer(session, 0, token))
        self.assertEqual(await self.token_counts(token), (1, 0))
        ok = await self.request("POST", REGISTER, {
            "username": "racer0", "password": TEST_PASSWORD, "auth": {"session": session}})
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(await self.token_counts(token), (0, 1))

    async def test_lowered_limit_refuses_the_reserved_use(self) -> None:
        token = await self.new_token(1)
        session = await self.completed_session(token)
        await self.request("PUT", f"{TOKENS}/{token}", {"uses_allowed": 0}, token=self.admin)
        resp = await self.request("POST", REGISTER, {
            "username": "racer0", "password": TEST_PASSWORD, "auth": {"session": session}})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertFalse(await self.hs.stores.users.user_exists("@racer0:test.local"))

    async def test_expired_session_releases_its_use_once(self) -> None:
        token = await self.new_token(1)
        session = await self.completed_session(token)
        self.assertEqual(await self.token_counts(token), (1, 0))
        # The server's own clean-up loop also runs on this advance: with it racing the
        # explicit call below, the session is still deleted and its use released once.
        self.advance(3601)
        await self.hs.stores.ui_auth.delete_expired(self.clock.time_msec() - 3600 * 1000)
        self.assertEqual(await self.token_counts(token), (0, 0))
        self.assertEqual(await self.hs.stores.ui_auth.delete_expired(
            self.clock.time_msec() - 3600 * 1000), 0)
        self.assertEqual(await self.token_counts(token), (0, 0))
        resp = await self.request("POST", REGISTER, {
            "username": "racer0", "password": TEST_PASSWORD, "auth": {"session": session}})
        self.assertMatrixError(resp, 400, "M_UNKNOWN")


class DummyFlowReplayTest(HomeserverTestCase):
    async def test_parallel_replay_of_a_dummy_session_registers_one_account(self) -> None:
        first = await self.request("POST", REGISTER, {"username": "d0"})
        session = first.json["session"]
        failed = await self.request("POST", REGISTER, {
            "username": "d0", "auth": {"type": "m.login.dummy", "session": session}})
        self.assertMatrixError(failed, 400, "M_MISSING_PARAM")
        results = await defer.gatherResults([
            defer.ensureDeferred(self.request("POST", REGISTER, {
                "username": f"d{i}", "password": TEST_PASSWORD, "auth": {"session": session}}))
            for i in range(PARALLEL)
        ])
        self.assertEqual(sorted(r.code for r in results), [200] + [400] * (PARALLEL - 1), results)
        created = [i for i in range(PARALLEL)
                   if await self.hs.stores.users.user_exists(f"@d{i}:test.local")]
        self.assertEqual(len(created), 1, created)


class PasswordChangeReplayTest(HomeserverTestCase):
    async def test_completed_session_changes_the_password_once(self) -> None:
        reg = await self.register("pat")
        token = reg["access_token"]
        path = f"{CS}/account/password"
        first = await self.request("POST", path, {"new_password": "x"}, token=token)
        session = first.json["session"]
        # The password stage completes, then the weak new password is refused: the
        # session is left complete and unspent (the client may retry with a better one).
        weak = await self.request("POST", path, {"new_password": "x", "logout_devices": False,
                                                 "auth": {
            "type": "m.login.password", "session": session, "password": TEST_PASSWORD,
            "identifier": {"type": "m.id.user", "user": "pat"}}}, token=token)
        self.assertMatrixError(weak, 400, "M_WEAK_PASSWORD")
        results = await defer.gatherResults([
            defer.ensureDeferred(self.request("POST", path, {
                "new_password": f"new-passw0rd-{i}", "logout_devices": False,
                "auth": {"session": session}}, token=token))
            for i in range(PARALLEL)
        ])
        self.assertEqual(sorted(r.code for r in results), [200] + [400] * (PARALLEL - 1), results)
        winner = [i for i, r in enumerate(results) if r.code == 200][0]
        self.assertEqual((await self.login("pat", f"new-passw0rd-{winner}")).code, 200)
