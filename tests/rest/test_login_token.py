"""Login tokens at the HTTP level: POST /_matrix/client/v1/login/get_token (UIA, rate
limited, off by default) and POST /login with ``m.login.token`` (single use, spent in
the transaction that starts the session, expiring, tied to the issuing session)."""

from __future__ import annotations

import hashlib
from typing import Any

import pyotp
from twisted.internet import defer
from twisted.trial.unittest import SkipTest

from homeserver.config import parse_config
from homeserver.config.loader import ConfigError
from homeserver.config.model import DEFAULT_RATE_LIMITS
from tests.harness import TEST_PASSWORD, HomeserverTestCase, Response, make_config

CS = "/_matrix/client/v3"
GET_TOKEN = "/_matrix/client/v1/login/get_token"
MFA = "/_parley/client/v1/mfa"
TOTP = "org.parley.totp"


class LoginTokenCase(HomeserverTestCase):
    enabled = True

    def config_overrides(self) -> dict[str, Any]:
        return {"login_tokens": {"enabled": True}} if self.enabled else {}

    def password(self, user: str, password: str = TEST_PASSWORD) -> dict[str, Any]:
        return {"type": "m.login.password", "password": password,
                "identifier": {"type": "m.id.user", "user": user}}

    async def user(self, name: str) -> tuple[str, str, str]:
        """Register; returns (user id, access token, device id)."""
        reg = await self.register(name)
        return reg["user_id"], reg["access_token"], reg["device_id"]

    async def uia(self, path: str, token: str, *stages: dict[str, Any],
                  body: dict[str, Any] | None = None) -> Response:
        """The first call, then each stage with the session of the last 401."""
        body = body or {}
        resp = await self.request("POST", path, body, token=token)
        for stage in stages:
            if resp.code != 401:
                return resp
            resp = await self.request("POST", path, {
                **body, "auth": {**stage, "session": resp.json["session"]}}, token=token)
        return resp

    async def get_token(self, name: str, token: str) -> str:
        resp = await self.uia(GET_TOKEN, token, self.password(name))
        self.assertEqual(resp.code, 200, resp)
        return resp.json["login_token"]

    async def token_login(self, login_token: Any, **extra: Any) -> Response:
        return await self.request("POST", f"{CS}/login",
                                  {"type": "m.login.token", "token": login_token, **extra})


class DisabledByDefaultTest(LoginTokenCase):
    enabled = False

    async def test_not_offered(self) -> None:
        self.assertFalse(self.config.login_tokens.enabled)
        flows = await self.request("GET", f"{CS}/login")
        self.assertEqual(flows.code, 200, flows)
        self.assertNotIn("m.login.token", [f["type"] for f in flows.json["flows"]])
        _, token, _ = await self.user("alice")
        caps = await self.request("GET", f"{CS}/capabilities", token=token)
        self.assertEqual(caps.json["capabilities"]["m.get_login_token"], {"enabled": False})
        # Not routed, as Synapse: 404 M_UNRECOGNIZED, before UIA or anything else.
        resp = await self.request("POST", GET_TOKEN, {}, token=token)
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        resp = await self.uia(GET_TOKEN, token, self.password("alice"))
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        # And the login type is unknown.
        resp = await self.token_login("plt_whatever")
        self.assertMatrixError(resp, 400, "M_UNKNOWN")
        self.assertEqual(await self.hs.stores.login_tokens.count_tokens(), 0)


class ConfigTest(LoginTokenCase):
    enabled = False

    def test_lifetime_default_and_bounds(self) -> None:
        cfg, _ = make_config(self.data_dir, "sqlite", login_tokens={"enabled": True})
        self.assertEqual(cfg.login_tokens.lifetime, 120.0)
        cfg, _ = make_config(self.data_dir, "sqlite", login_tokens={"lifetime": "30s"})
        self.assertEqual(cfg.login_tokens.lifetime, 30.0)
        self.assertFalse(cfg.login_tokens.enabled)
        for bad in ("1s", "1h", 0):
            with self.assertRaises(ConfigError) as cm:
                make_config(self.data_dir, "sqlite", login_tokens={"lifetime": bad})
            self.assertIn("login_tokens.lifetime", str(cm.exception))
        with self.assertRaises(ConfigError):
            parse_config({"server_name": "x", "login_tokens": {"enabled": True, "bogus": 1}})


class GetTokenTest(LoginTokenCase):
    async def test_advertised_when_enabled(self) -> None:
        flows = await self.request("GET", f"{CS}/login")
        self.assertIn({"type": "m.login.token", "get_login_token": True}, flows.json["flows"])
        self.assertIn({"type": "m.login.password"}, flows.json["flows"])
        _, token, _ = await self.user("alice")
        caps = await self.request("GET", f"{CS}/capabilities", token=token)
        self.assertEqual(caps.json["capabilities"]["m.get_login_token"], {"enabled": True})

    async def test_requires_uia_every_time(self) -> None:
        uid, token, device = await self.user("alice")
        first = await self.request("POST", GET_TOKEN, {}, token=token)
        self.assertEqual(first.code, 401, first)
        self.assertEqual(first.json["flows"], [{"stages": ["m.login.password"]}])
        wrong = await self.uia(GET_TOKEN, token, self.password("alice", "wrong-password"))
        self.assertEqual(wrong.code, 401, wrong)
        self.assertEqual(wrong.json.get("errcode"), "M_FORBIDDEN")
        ok = await self.request("POST", GET_TOKEN, {"auth": {
            **self.password("alice"), "session": first.json["session"]}}, token=token)
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(ok.json["expires_in_ms"], 120_000)
        login_token = ok.json["login_token"]
        self.assertIsInstance(login_token, str)
        self.assertGreaterEqual(len(login_token), 40)
        # A completed session is spent: replaying it gets no second token.
        replay = await self.request("POST", GET_TOKEN, {"auth": {
            **self.password("alice"), "session": first.json["session"]}}, token=token)
        self.assertMatrixError(replay, 400, "M_UNKNOWN")
        # Nor does a request without auth right after: every token needs a fresh UIA.
        self.assertEqual((await self.request("POST", GET_TOKEN, {}, token=token)).code, 401)
        # Stored hashed, with the user, the issuing device and session.
        store = self.hs.stores.login_tokens
        self.assertIsNone(await store.get_token(login_token))
        row = await store.get_token(hashlib.sha256(login_token.encode()).hexdigest())
        self.assertIsNotNone(row)
        assert row is not None
        self.assertEqual((row.user_id, row.device_id), (uid, device))
        self.assertEqual(row.expires_ts - row.created_ts, 120_000)
        self.assertIsNone(row.used_ts)
        issued = await self.hs.stores.security_events.list_events(
            event_type="login_token_issue")
        self.assertEqual([(e.outcome, e.user_id, e.device_id) for e in issued],
                         [("success", uid, device)])

    async def test_needs_an_access_token(self) -> None:
        resp = await self.request("POST", GET_TOKEN, {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        bad = await self.request("POST", GET_TOKEN, {"auth": "x"}, token=(await self.user("b"))[1])
        self.assertEqual(bad.code, 400, bad)
        self.assertEqual(await self.hs.stores.login_tokens.count_tokens(), 0)

    async def test_mfa_enrolled_user_needs_the_second_factor(self) -> None:
        uid, token, _ = await self.user("alice")
        enrol = await self.uia(f"{MFA}/totp/enroll", token, self.password("alice"))
        self.assertEqual(enrol.code, 200, enrol)
        secret = enrol.json["secret"]
        confirm = await self.request("POST", f"{MFA}/totp/confirm",
                                     {"code": pyotp.TOTP(secret).at(self.clock.time())},
                                     token=token)
        self.assertEqual(confirm.code, 200, confirm)
        self.advance(30)
        # The password alone is not enough any more.
        first = await self.request("POST", GET_TOKEN, {}, token=token)
        self.assertIn({"stages": ["m.login.password", TOTP]}, first.json["flows"])
        after_pw = await self.request("POST", GET_TOKEN, {"auth": {
            **self.password("alice"), "session": first.json["session"]}}, token=token)
        self.assertEqual(after_pw.code, 401, after_pw)
        self.assertIn("m.login.password", after_pw.json["completed"])
        self.assertNotIn("login_token", after_pw.json)
        wrong = await self.request("POST", GET_TOKEN, {"auth": {
            "type": TOTP, "code": "000000" if pyotp.TOTP(secret).at(self.clock.time())
            != "000000" else "111111", "session": first.json["session"]}}, token=token)
        self.assertEqual(wrong.code, 401, wrong)
        done = await self.request("POST", GET_TOKEN, {"auth": {
            "type": TOTP, "code": pyotp.TOTP(secret).at(self.clock.time()),
            "session": first.json["session"]}}, token=token)
        self.assertEqual(done.code, 200, done)
        # The token login itself asks for no second factor (the issuer passed it).
        login = await self.token_login(done.json["login_token"])
        self.assertEqual(login.code, 200, login)
        self.assertEqual(login.json["user_id"], uid)


class GuestTest(LoginTokenCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"login_tokens": {"enabled": True}, "registration": {"allow_guests": True}}

    async def test_guests_get_no_login_token(self) -> None:
        guest = await self.request("POST", f"{CS}/register?kind=guest", {})
        self.assertEqual(guest.code, 200, guest)
        resp = await self.request("POST", GET_TOKEN, {}, token=guest.json["access_token"])
        self.assertMatrixError(resp, 403, "M_GUEST_ACCESS_FORBIDDEN")
        self.assertEqual(await self.hs.stores.login_tokens.count_tokens(), 0)


class TokenLoginTest(LoginTokenCase):
    async def test_token_works_once(self) -> None:
        uid, token, device = await self.user("alice")
        login_token = await self.get_token("alice", token)
        login = await self.token_login(login_token, initial_device_display_name="Phone",
                                       refresh_token=True)
        self.assertEqual(login.code, 200, login)
        self.assertEqual(login.json["user_id"], uid)
        self.assertNotEqual(login.json["device_id"], device)
        self.assertIn("refresh_token", login.json)
        who = await self.request("GET", f"{CS}/account/whoami",
                                 token=login.json["access_token"])
        self.assertEqual(who.code, 200, who)
        self.assertEqual((who.json["user_id"], who.json["device_id"], who.json["is_guest"]),
                         (uid, login.json["device_id"], False))
        devices = await self.request("GET", f"{CS}/devices", token=token)
        names = {d["device_id"]: d["display_name"] for d in devices.json["devices"]}
        self.assertEqual(names.get(login.json["device_id"]), "Phone")
        # The issuing session is untouched.
        self.assertEqual((await self.request("GET", f"{CS}/account/whoami", token=token)).code,
                         200)
        again = await self.token_login(login_token)
        self.assertMatrixError(again, 403, "M_FORBIDDEN")
        self.assertEqual(again.json["error"], "Invalid login token")
        # Audit: one success by token, one failure (reuse).
        events = await self.hs.stores.security_events.list_events(event_type="login",
                                                                  user_id=uid)
        by_token = [(e.outcome, e.reason) for e in events
                    if (e.details or {}).get("via") == "m.login.token"]
        self.assertEqual(sorted(by_token, key=str),
                         sorted([("success", None), ("failure", "login token already used")],
                                key=str))

    async def test_named_device(self) -> None:
        _, token, _ = await self.user("alice")
        login = await self.token_login(await self.get_token("alice", token), device_id="NEWDEV")
        self.assertEqual(login.code, 200, login)
        self.assertEqual(login.json["device_id"], "NEWDEV")

    async def test_concurrent_double_use_gives_one_session(self) -> None:
        uid, token, _ = await self.user("alice")
        login_token = await self.get_token("alice", token)
        before = await self.request("GET", f"{CS}/devices", token=token)
        results = await defer.gatherResults([
            defer.ensureDeferred(self.token_login(login_token)) for _ in range(4)])
        codes = sorted(r.code for r in results)
        self.assertEqual(codes, [200, 403, 403, 403], results)
        for r in results:
            if r.code == 403:
                self.assertMatrixError(r, 403, "M_FORBIDDEN")
        after = await self.request("GET", f"{CS}/devices", token=token)
        self.assertEqual(len(after.json["devices"]), len(before.json["devices"]) + 1)

    async def test_expiry_on_the_clock(self) -> None:
        _, token, _ = await self.user("alice")
        early = await self.get_token("alice", token)
        late = await self.get_token("alice", token)
        self.advance(119)
        self.assertEqual((await self.token_login(early)).code, 200)
        self.advance(2)
        self.assertMatrixError(await self.token_login(late), 403, "M_FORBIDDEN")
        # Expired rows are swept when the next token is issued.
        self.assertEqual(await self.hs.stores.login_tokens.count_tokens(), 2)
        await self.get_token("alice", token)
        self.assertEqual(await self.hs.stores.login_tokens.count_tokens(), 1)

    async def test_wrong_missing_and_oversized_tokens(self) -> None:
        uid, token, _ = await self.user("alice")
        real = await self.get_token("alice", token)
        self.assertMatrixError(await self.token_login(real + "x"), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.token_login("plt_" + "A" * 43), 403, "M_FORBIDDEN")
        missing = await self.request("POST", f"{CS}/login", {"type": "m.login.token"})
        self.assertMatrixError(missing, 400, "M_MISSING_PARAM")
        self.assertEqual((await self.token_login("")).code, 400)
        huge = await self.token_login("x" * 10_000)
        self.assertEqual(huge.code, 400, huge)
        self.assertEqual((await self.token_login(123)).code, 400)
        # None of these spent the real token.
        self.assertEqual((await self.token_login(real)).code, 200)

    async def test_deactivated_user(self) -> None:
        uid, token, _ = await self.user("alice")
        login_token = await self.get_token("alice", token)
        # Deactivated with its session still live (a race): the account decides.
        await self.hs.stores.users.deactivate(uid, self.clock.time_msec())
        resp = await self.token_login(login_token)
        self.assertMatrixError(resp, 403, "M_USER_DEACTIVATED")
        devices = await self.hs.stores.devices.list_devices(uid)
        self.assertEqual(len(devices), 1)  # no device made for the refused login

    async def test_locked_user(self) -> None:
        roles = getattr(self.hs.stores, "roles", None)
        if roles is None:
            raise SkipTest("no account locking in this tree (storage/stores/roles.py)")
        uid, token, _ = await self.user("alice")
        login_token = await self.get_token("alice", token)
        self.assertTrue(await roles.set_flag(uid, "locked", True))
        resp = await self.token_login(login_token)
        self.assertEqual(resp.code, 401, resp)
        self.assertEqual(resp.json["errcode"], "M_USER_LOCKED")
        self.assertEqual(len(await self.hs.stores.devices.list_devices(uid)), 1)
        # Unlocked again, the (unspent) token works.
        self.assertTrue(await roles.set_flag(uid, "locked", False))
        self.assertEqual((await self.token_login(login_token)).code, 200)

    async def test_deactivation_through_the_api_ends_tokens(self) -> None:
        uid, token, _ = await self.user("alice")
        login_token = await self.get_token("alice", token)
        resp = await self.uia(f"{CS}/account/deactivate", token, self.password("alice"))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.token_login(login_token)).code, 403)

    async def test_logout_of_the_issuing_session_ends_its_tokens(self) -> None:
        _, token, _ = await self.user("alice")
        login_token = await self.get_token("alice", token)
        self.assertEqual((await self.request("POST", f"{CS}/logout", {}, token=token)).code, 200)
        self.assertMatrixError(await self.token_login(login_token), 403, "M_FORBIDDEN")

    async def test_token_of_one_user_logs_in_only_that_user(self) -> None:
        a_uid, a_token, _ = await self.user("alice")
        await self.user("bob")
        login = await self.token_login(await self.get_token("alice", a_token),
                                       user="bob", identifier={"type": "m.id.user",
                                                               "user": "bob"})
        self.assertEqual(login.code, 200, login)
        self.assertEqual(login.json["user_id"], a_uid)


class GetTokenRateLimitTest(LoginTokenCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"login_tokens": {"enabled": True},
                "rate_limits": {"login_token": DEFAULT_RATE_LIMITS["login_token"]}}

    async def test_limited_per_user(self) -> None:
        _, token, _ = await self.user("alice")
        burst = DEFAULT_RATE_LIMITS["login_token"]["burst"]
        # A UIA round trip is two requests: the burst gives burst // 2 tokens.
        for _ in range(burst // 2):
            await self.get_token("alice", token)
        limited = await self.request("POST", GET_TOKEN, {}, token=token)
        self.assertMatrixError(limited, 429, "M_LIMIT_EXCEEDED")
        self.assertGreater(limited.json["retry_after_ms"], 0)
        # Another user has their own budget.
        _, bob, _ = await self.user("bob")
        self.assertEqual((await self.request("POST", GET_TOKEN, {}, token=bob)).code, 401)
        # After a minute alice may again.
        self.advance(60)
        self.assertEqual((await self.request("POST", GET_TOKEN, {}, token=token)).code, 401)
