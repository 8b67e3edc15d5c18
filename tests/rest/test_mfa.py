"""TOTP two-factor login at the HTTP level: enrolment, the /login second step, every
UIA endpoint needing the stage, replay, brute force, recovery codes, mfa.required."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
from twisted.internet import defer

from tests.harness import TEST_PASSWORD, HomeserverTestCase, Response
from tests.rest.test_cross_signing import Identity

CS = "/_matrix/client/v3"
MFA = "/_parley/client/v1/mfa"
TOTP = "org.parley.totp"
RECOVERY = "org.parley.recovery_code"


class MfaTestCase(HomeserverTestCase):
    """Helpers: register, enrol, compute codes at the server's (frozen) time."""

    def code(self, secret: str, steps_ahead: int = 0) -> str:
        return pyotp.TOTP(secret).at(self.clock.time() + 30 * steps_ahead)

    def next_step(self) -> None:
        """Move to the next 30 s time-step (codes of earlier steps are then spent or old)."""
        self.advance(30)

    async def user(self, name: str) -> tuple[str, str, str]:
        """Register; returns (user id, access token, device id)."""
        reg = await self.register(name)
        return reg["user_id"], reg["access_token"], reg["device_id"]

    async def uia(self, method: str, path: str, body: dict[str, Any], token: str,
                  *stages: dict[str, Any]) -> Response:
        """Run a UIA request: the first call, then each stage in turn (the session of
        the first 401 carried along); returns the last response."""
        resp = await self.request(method, path, body, token=token)
        for stage in stages:
            if resp.code != 401:
                return resp
            auth = {**stage, "session": resp.json["session"]}
            resp = await self.request(method, path, {**body, "auth": auth}, token=token)
        return resp

    def password(self, user_id: str) -> dict[str, Any]:
        return {"type": "m.login.password", "password": TEST_PASSWORD,
                "identifier": {"type": "m.id.user", "user": user_id}}

    async def enrol(self, user_id: str, token: str) -> tuple[str, list[str]]:
        """Enrol TOTP; returns (secret, recovery codes). Leaves the clock on a fresh step."""
        resp = await self.uia("POST", f"{MFA}/totp/enroll", {}, token, self.password(user_id))
        self.assertEqual(resp.code, 200, resp)
        secret = resp.json["secret"]
        confirm = await self.request("POST", f"{MFA}/totp/confirm",
                                     {"code": self.code(secret)}, token=token)
        self.assertEqual(confirm.code, 200, confirm)
        self.next_step()
        return secret, confirm.json["recovery_codes"]

    async def login_first(self, user: str, **extra: Any) -> Response:
        resp = await self.login(user, **extra)
        self.assertEqual(resp.code, 401, resp)
        return resp

    async def login_second(self, session: str, stage: str, code: str,
                           **extra: Any) -> Response:
        return await self.request("POST", f"{CS}/login",
                                  {"type": stage, "session": session, "code": code, **extra})

    async def events(self, event_type: str) -> list[Any]:
        return await self.hs.stores.security_events.list_events(event_type=event_type)


class EnrolmentTest(MfaTestCase):
    async def test_enrol_confirm_status(self) -> None:
        uid, token, _ = await self.user("alice")
        status = await self.request("GET", MFA, token=token)
        self.assertEqual(status.code, 200, status)
        self.assertFalse(status.json["enabled"])
        # Enrolment is behind UIA: the first call asks for a password.
        first = await self.request("POST", f"{MFA}/totp/enroll", {}, token=token)
        self.assertEqual(first.code, 401, first)
        self.assertEqual(first.json["flows"], [{"stages": ["m.login.password"]}])
        resp = await self.uia("POST", f"{MFA}/totp/enroll", {}, token, self.password(uid))
        self.assertEqual(resp.code, 200, resp)
        uri = urlparse(resp.json["otpauth_uri"])
        self.assertEqual((uri.scheme, uri.netloc), ("otpauth", "totp"))
        query = parse_qs(uri.query)
        self.assertEqual(query["issuer"], ["test.local"])
        self.assertEqual(query["secret"], [resp.json["secret"]])
        # Not enabled until confirmed; a wrong code does not confirm.
        self.assertFalse((await self.request("GET", MFA, token=token)).json["enabled"])
        wrong = await self.request("POST", f"{MFA}/totp/confirm", {"code": "000000"}
                                   if self.code(resp.json["secret"]) != "000000"
                                   else {"code": "111111"}, token=token)
        self.assertMatrixError(wrong, 403, "M_FORBIDDEN")
        ok = await self.request("POST", f"{MFA}/totp/confirm",
                                {"code": self.code(resp.json["secret"])}, token=token)
        self.assertEqual(ok.code, 200, ok)
        codes = ok.json["recovery_codes"]
        self.assertEqual(len(codes), 10)
        self.assertEqual(len(set(codes)), 10)
        status = await self.request("GET", MFA, token=token)
        self.assertEqual(status.json["enabled"], True)
        self.assertEqual(status.json["recovery_codes_left"], 10)
        # Stored hashed (Argon2id), never in clear.
        stored = await self.hs.stores.mfa.unused_recovery_codes(uid)
        self.assertEqual(len(stored), 10)
        self.assertTrue(all(h.startswith("$argon2id$") for _, h in stored))
        self.assertFalse({c.replace("-", "") for c in codes} & {h for _, h in stored})
        self.assertEqual(len(await self.events("mfa_enabled")), 1)
        # A second enrolment is refused while enabled.
        again = await self.request("POST", f"{MFA}/totp/enroll", {}, token=token)
        self.assertMatrixError(again, 400, "M_INVALID_PARAM")

    async def test_confirm_without_enrolment(self) -> None:
        _, token, _ = await self.user("bob")
        resp = await self.request("POST", f"{MFA}/totp/confirm", {"code": "123456"},
                                  token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        bad = await self.request("POST", f"{MFA}/totp/confirm", {"code": 5}, token=token)
        self.assertMatrixError(bad, 400, "M_BAD_JSON")
        anon = await self.request("GET", MFA)
        self.assertMatrixError(anon, 401, "M_MISSING_TOKEN")

    async def test_disable_and_regenerate_need_a_code(self) -> None:
        uid, token, _ = await self.user("carol")
        secret, _ = await self.enrol(uid, token)
        # The password alone no longer completes the flow.
        resp = await self.uia("POST", f"{MFA}/totp/disable", {}, token, self.password(uid))
        self.assertEqual(resp.code, 401, resp)
        self.assertEqual(resp.json["completed"], ["m.login.password"])
        self.assertIn(TOTP, resp.json["error"])
        regen = await self.uia("POST", f"{MFA}/recovery_codes/regenerate", {}, token,
                               self.password(uid), {"type": TOTP, "code": self.code(secret)})
        self.assertEqual(regen.code, 200, regen)
        self.assertEqual(len(regen.json["recovery_codes"]), 10)
        self.next_step()
        off = await self.uia("POST", f"{MFA}/totp/disable", {}, token, self.password(uid),
                             {"type": TOTP, "code": self.code(secret)})
        self.assertEqual(off.code, 200, off)
        self.assertFalse((await self.request("GET", MFA, token=token)).json["enabled"])
        self.assertEqual(len(await self.events("mfa_disabled")), 1)
        self.assertEqual(await self.hs.stores.mfa.unused_recovery_codes(uid), [])
        # Password-only login again.
        self.assertEqual((await self.login("carol")).code, 200)


class LoginTest(MfaTestCase):
    async def test_login_with_password_and_code(self) -> None:
        uid, token, _ = await self.user("dave")
        secret, _ = await self.enrol(uid, token)
        first = await self.login_first("dave", device_id="PHONE",
                                       initial_device_display_name="Phone")
        body = first.json
        self.assertEqual(body["errcode"], "ORG_PARLEY_SECOND_FACTOR_REQUIRED")
        self.assertIn(TOTP, body["error"])
        self.assertEqual(body["flows"], [{"stages": ["m.login.password", TOTP]},
                                         {"stages": ["m.login.password", RECOVERY]}])
        self.assertEqual(body["completed"], ["m.login.password"])
        self.assertNotIn("access_token", body)
        # A wrong code keeps the session for another try.
        wrong = await self.login_second(body["session"], TOTP, self.code(secret, 5))
        self.assertEqual(wrong.code, 401, wrong)
        self.assertEqual(wrong.json["errcode"], "M_FORBIDDEN")
        ok = await self.login_second(body["session"], TOTP, self.code(secret))
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(ok.json["user_id"], uid)
        self.assertEqual(ok.json["device_id"], "PHONE")  # remembered from the first step
        who = await self.request("GET", f"{CS}/account/whoami", token=ok.json["access_token"])
        self.assertEqual(who.code, 200, who)
        # The session is spent: it cannot log in a second device.
        self.next_step()
        again = await self.login_second(body["session"], TOTP, self.code(secret))
        self.assertMatrixError(again, 400, "M_UNKNOWN")
        vias = [(e.details or {}).get("via") for e in await self.events("login")
                if e.outcome == "success"]
        self.assertEqual(vias.count(TOTP), 1)
        pending = [e for e in await self.events("login") if e.outcome == "pending"]
        self.assertEqual(len(pending), 1)

    async def test_wrong_password_never_reaches_second_step(self) -> None:
        uid, token, _ = await self.user("erin")
        await self.enrol(uid, token)
        resp = await self.login("erin", "wrong-password-here")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_second_step_needs_a_password_session(self) -> None:
        uid, token, _ = await self.user("frank")
        secret, _ = await self.enrol(uid, token)
        for session in ("made-up", ""):
            resp = await self.login_second(session, TOTP, self.code(secret))
            self.assertIn(resp.code, (400,), resp)
        # A UIA session of another endpoint cannot be used as a login session.
        other = await self.request("POST", f"{CS}/account/password",
                                   {"new_password": "another-long-one"}, token=token)
        self.assertEqual(other.code, 401, other)
        resp = await self.login_second(other.json["session"], TOTP, self.code(secret))
        self.assertMatrixError(resp, 400, "M_UNKNOWN")
        # Nor can the second step be skipped by claiming a stage at the first.
        missing = await self.request("POST", f"{CS}/login", {"type": TOTP, "code": "123456"})
        self.assertMatrixError(missing, 400, "M_MISSING_PARAM")

    async def test_code_replay_refused(self) -> None:
        uid, token, _ = await self.user("gina")
        secret, _ = await self.enrol(uid, token)
        code = self.code(secret)
        first = await self.login_first("gina")
        ok = await self.login_second(first.json["session"], TOTP, code)
        self.assertEqual(ok.code, 200, ok)
        # The same code, within its window, in a new login: refused.
        self.advance(5)
        second = await self.login_first("gina")
        replay = await self.login_second(second.json["session"], TOTP, code)
        self.assertEqual(replay.code, 401, replay)
        self.assertEqual(replay.json["errcode"], "M_FORBIDDEN")
        # ...and in a UIA flow too.
        resp = await self.uia("POST", f"{CS}/delete_devices", {"devices": []}, token,
                              self.password(uid), {"type": TOTP, "code": code})
        self.assertEqual(resp.code, 401, resp)
        reasons = [e.reason for e in await self.events("mfa_failure")]
        self.assertEqual(reasons.count("code already used"), 2)
        # A code of a newer step still works in the session the replay failed in.
        self.next_step()
        fresh = await self.login_second(second.json["session"], TOTP, self.code(secret))
        self.assertEqual(fresh.code, 200, fresh)

    async def test_brute_force_locks_out(self) -> None:
        uid, token, _ = await self.user("hank")
        secret, _ = await self.enrol(uid, token)
        session = (await self.login_first("hank")).json["session"]
        right = self.code(secret)
        wrong = [c for c in ("000000", "111111", "222222", "333333", "444444", "555555",
                             "666666") if c not in {right, self.code(secret, -1),
                                                    self.code(secret, 1)}][:5]
        for code in wrong:
            resp = await self.login_second(session, TOTP, code)
            self.assertEqual(resp.code, 401, resp)
        locked = await self.login_second(session, TOTP, right)
        self.assertMatrixError(locked, 429, "M_LIMIT_EXCEEDED")
        self.assertEqual(locked.json["retry_after_ms"], 30_000)
        self.assertEqual(locked.header("Retry-After"), "30")
        # Locked out in UIA flows too, and for recovery codes.
        rec = await self.login_second(session, RECOVERY, "aaaa-bbbb-cccc")
        self.assertMatrixError(rec, 429, "M_LIMIT_EXCEEDED")
        events = await self.events("mfa_failure")
        self.assertEqual(len([e for e in events if e.reason == "invalid code"]), 5)
        self.assertEqual(len([e for e in events if e.reason == "locked out"]), 1)
        # After the lockout the right code works (and resets the count).
        self.advance(31)
        ok = await self.login_second(session, TOTP, self.code(secret))
        self.assertEqual(ok.code, 200, ok)
        # A second lockout lasts twice as long... after a reset the count starts again,
        # so five more wrong codes lock for 30 s, then five more for 60 s.
        session = (await self.login_first("hank")).json["session"]
        for _ in range(2):
            for _ in range(5):
                await self.login_second(session, TOTP, "999999"
                                        if self.code(secret) != "999999" else "888888")
            last = await self.login_second(session, TOTP, "1")
            self.assertEqual(last.code, 429, last)
            wait = last.json["retry_after_ms"]
            self.advance(wait / 1000 + 1)
        self.assertEqual(wait, 60_000)


class ConcurrencyTest(MfaTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"mfa": {"max_failures": 20}}  # the losers' failures must not lock out

    async def test_concurrent_uses_of_one_code_one_wins(self) -> None:
        uid, token, _ = await self.user("quinn")
        secret, codes = await self.enrol(uid, token)
        for stage, code in ((TOTP, self.code(secret)), (RECOVERY, codes[0])):
            sessions = [(await self.login_first("quinn")).json["session"] for _ in range(4)]
            results = await defer.gatherResults([
                defer.ensureDeferred(self.login_second(sid, stage, code)) for sid in sessions])
            self.assertEqual(sorted(r.code for r in results), [200, 401, 401, 401],
                             (stage, results))


class RecoveryCodeTest(MfaTestCase):
    async def test_recovery_code_works_once(self) -> None:
        uid, token, _ = await self.user("ivy")
        _, codes = await self.enrol(uid, token)
        first = await self.login_first("ivy")
        # Typed with other case and without dashes: still the code.
        ok = await self.login_second(first.json["session"], RECOVERY,
                                     codes[3].upper().replace("-", " "))
        self.assertEqual(ok.code, 200, ok)
        second = await self.login_first("ivy")
        again = await self.login_second(second.json["session"], RECOVERY, codes[3])
        self.assertEqual(again.code, 401, again)
        self.assertEqual(again.json["errcode"], "M_FORBIDDEN")
        status = await self.request("GET", MFA, token=token)
        self.assertEqual(status.json["recovery_codes_left"], 9)
        used = await self.events("recovery_code_used")
        self.assertEqual(len(used), 1)
        self.assertEqual(used[0].user_id, uid)
        # Another one still works (in a UIA flow this time).
        resp = await self.uia("POST", f"{CS}/delete_devices", {"devices": []}, token,
                              self.password(uid), {"type": RECOVERY, "code": codes[0]})
        self.assertEqual(resp.code, 200, resp)

    async def test_regenerated_codes_replace_old(self) -> None:
        uid, token, _ = await self.user("jack")
        secret, old = await self.enrol(uid, token)
        resp = await self.uia("POST", f"{MFA}/recovery_codes/regenerate", {}, token,
                              self.password(uid), {"type": TOTP, "code": self.code(secret)})
        self.assertEqual(resp.code, 200, resp)
        first = await self.login_first("jack")
        stale = await self.login_second(first.json["session"], RECOVERY, old[0])
        self.assertEqual(stale.code, 401, stale)
        fresh = await self.login_second(first.json["session"], RECOVERY,
                                        resp.json["recovery_codes"][0])
        self.assertEqual(fresh.code, 200, fresh)


class UiaBypassTest(MfaTestCase):
    """Every UIA endpoint of an enrolled user needs the second factor."""

    async def test_every_uia_endpoint_refuses_without_the_stage(self) -> None:
        uid, token, device = await self.user("kate")
        other = (await self.login("kate")).json["device_id"]
        # A master key before enrolling, so a later upload replaces it (needs UIA).
        first_key = await self.request("POST", f"{CS}/keys/device_signing/upload",
                                       {"master_key": Identity(uid).master_key()}, token=token)
        self.assertEqual(first_key.code, 200, first_key)
        secret, _ = await self.enrol(uid, token)
        endpoints: list[tuple[str, str, dict[str, Any]]] = [
            ("DELETE", f"{CS}/devices/{other}", {}),
            ("POST", f"{CS}/delete_devices", {"devices": [other]}),
            ("POST", f"{CS}/account/password", {"new_password": "a-new-long-password"}),
            ("POST", f"{CS}/account/deactivate", {}),
            ("POST", f"{CS}/keys/device_signing/upload",
             {"master_key": Identity(uid).master_key()}),
            ("POST", f"{MFA}/totp/disable", {}),
            ("POST", f"{MFA}/recovery_codes/regenerate", {}),
        ]
        for method, path, body in endpoints:
            first = await self.request(method, path, body, token=token)
            self.assertEqual(first.code, 401, (path, first))
            for flow in first.json["flows"]:
                self.assertTrue({TOTP, RECOVERY} & set(flow["stages"]), (path, flow))
            self.assertIn(TOTP, first.json["params"])
            session = first.json["session"]
            # The password alone: the flow is not complete.
            resp = await self.request(method, path, {**body, "auth": {
                **self.password(uid), "session": session}}, token=token)
            self.assertEqual(resp.code, 401, (path, resp))
            self.assertEqual(resp.json["completed"], ["m.login.password"], path)
            self.assertIn(TOTP, resp.json["error"])
            # Other ways round it: a dummy stage, an empty or malformed code.
            for auth in ({"type": "m.login.dummy"}, {"type": TOTP},
                         {"type": TOTP, "code": ""}, {"type": TOTP, "code": ["123456"]}):
                resp = await self.request(method, path, {**body, "auth": {
                    **auth, "session": session}}, token=token)
                self.assertEqual(resp.code, 401, (path, auth, resp))
                self.assertEqual(resp.json["completed"], ["m.login.password"], path)
            # Still the same account, device and password.
            self.assertEqual((await self.request("GET", f"{CS}/account/whoami",
                                                 token=token)).code, 200)
        devices = await self.request("GET", f"{CS}/devices", token=token)
        self.assertIn(other, {d["device_id"] for d in devices.json["devices"]})
        self.assertTrue((await self.request("GET", MFA, token=token)).json["enabled"])
        # With the code, the action goes through.
        self.next_step()
        resp = await self.uia("DELETE", f"{CS}/devices/{other}", {}, token, self.password(uid),
                              {"type": TOTP, "code": self.code(secret)})
        self.assertEqual(resp.code, 200, resp)
        self.assertNotEqual(device, other)

    async def test_registration_cannot_use_the_stage(self) -> None:
        first = await self.request("POST", f"{CS}/register", {"username": "lena",
                                                             "password": TEST_PASSWORD})
        resp = await self.request("POST", f"{CS}/register", {
            "username": "lena", "password": TEST_PASSWORD,
            "auth": {"type": TOTP, "code": "123456", "session": first.json["session"]}})
        self.assertEqual(resp.code, 401, resp)
        self.assertEqual(resp.json["errcode"], "M_UNRECOGNIZED")

    async def test_not_enrolled_flows_unchanged(self) -> None:
        _, token, _ = await self.user("mona")
        resp = await self.request("POST", f"{CS}/delete_devices", {"devices": []}, token=token)
        self.assertEqual(resp.json["flows"], [{"stages": ["m.login.password"]}])
        self.assertNotIn(TOTP, resp.json["params"])


class RequiredEveryoneTest(MfaTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"mfa": {"required": "everyone"}}

    async def test_must_enrol_before_anything_else(self) -> None:
        uid, token, _ = await self.user("nina")
        for method, path in (("GET", f"{CS}/sync"), ("GET", f"{CS}/devices"),
                             ("POST", f"{CS}/createRoom")):
            resp = await self.request(method, path, {} if method == "POST" else None,
                                      token=token)
            self.assertMatrixError(resp, 403, "ORG_PARLEY_MFA_REQUIRED")
        self.assertEqual((await self.request("GET", f"{CS}/account/whoami", token=token)).code,
                         200)
        self.assertEqual((await self.request("GET", "/_matrix/client/versions")).code, 200)
        status = await self.request("GET", MFA, token=token)
        self.assertEqual(status.json["required"], True)
        await self.enrol(uid, token)
        resp = await self.request("GET", f"{CS}/devices", token=token)
        self.assertEqual(resp.code, 200, resp)
        logout = await self.request("POST", f"{CS}/logout", token=token)
        self.assertEqual(logout.code, 200, logout)


class RequiredAdminsTest(MfaTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"mfa": {"required": "admins"}}

    async def test_only_admins_must_enrol(self) -> None:
        _, token, _ = await self.user("olga")
        self.assertEqual((await self.request("GET", f"{CS}/devices", token=token)).code, 200)
        admin, admin_token, _ = await self.user("paul")
        await self.hs.stores.users.set_admin(admin, True)
        resp = await self.request("GET", f"{CS}/devices", token=admin_token)
        self.assertMatrixError(resp, 403, "ORG_PARLEY_MFA_REQUIRED")
