"""Rate limits on the authentication paths, with the real default limits (the harness
raises them for every other test), and the cap on queued Argon2 work."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer

from homeserver.config.model import DEFAULT_RATE_LIMITS
from tests.harness import TEST_PASSWORD, HomeserverTestCase, Response

CS = "/_matrix/client/v3"


class DefaultAuthRateLimitTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        # The loader's own defaults (the harness sets generous ones for other tests).
        return {"rate_limits": DEFAULT_RATE_LIMITS}

    def assertLimited(self, resp: Response) -> int:  # noqa: N802 (unittest style)
        self.assertMatrixError(resp, 429, "M_LIMIT_EXCEEDED")
        retry_ms = resp.json["retry_after_ms"]
        self.assertIsInstance(retry_ms, int)
        self.assertGreater(retry_ms, 0)
        self.assertGreaterEqual(int(resp.header("Retry-After") or "0") * 1000, retry_ms)
        return retry_ms

    async def test_login_gets_429_after_the_burst(self) -> None:
        burst = DEFAULT_RATE_LIMITS["login"]["burst"]
        for _ in range(burst):
            self.assertMatrixError(await self.login("nobody", "wrong-password"), 403, "M_FORBIDDEN")
        limited = await self.login("nobody", "wrong-password")
        retry_ms = self.assertLimited(limited)
        # A refused request does not extend the wait; after it, one more is admitted.
        self.advance(retry_ms / 1000)
        self.assertMatrixError(await self.login("nobody", "wrong-password"), 403, "M_FORBIDDEN")
        self.assertLimited(await self.login("nobody", "wrong-password"))

    async def test_limited_login_costs_no_hashing(self) -> None:
        for _ in range(DEFAULT_RATE_LIMITS["login"]["burst"]):
            await self.login("nobody", "wrong-password")
        calls = self.count_password_hashes()
        self.assertLimited(await self.login("nobody", "wrong-password"))
        self.assertEqual(calls, [])

    async def test_registration_gets_429_after_the_burst(self) -> None:
        burst = DEFAULT_RATE_LIMITS["registration"]["burst"]
        # A client's sign-up (stage 0 + dummy stage) fits in the burst.
        await self.register("first")
        for _ in range(burst - 2):
            resp = await self.request("POST", f"{CS}/register", {"username": "x"})
            self.assertEqual(resp.code, 401, resp)
        self.assertLimited(await self.request("POST", f"{CS}/register", {"username": "x"}))
        # Guests, availability checks and token validity are in the same class.
        self.assertLimited(await self.request("POST", f"{CS}/register?kind=guest", {}))
        self.assertLimited(await self.request("GET", f"{CS}/register/available?username=y"))
        self.assertLimited(await self.request(
            "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=t"))
        self.advance(1)
        resp = await self.request("GET", f"{CS}/register/available?username=y")
        self.assertEqual(resp.code, 200, resp)

    async def test_uia_password_attempts_are_limited_per_user(self) -> None:
        token = (await self.register("uma"))["access_token"]
        path = f"{CS}/account/password"
        first = await self.request("POST", path, {"new_password": "a-new-passw0rd"}, token=token)
        session = first.json["session"]

        def attempt(password: str) -> dict[str, Any]:
            return {"new_password": "a-new-passw0rd", "auth": {
                "type": "m.login.password", "session": session, "password": password,
                "identifier": {"type": "m.id.user", "user": "uma"}}}

        for _ in range(DEFAULT_RATE_LIMITS["uia_password"]["burst"]):
            resp = await self.request("POST", path, attempt("wrong-password"), token=token)
            self.assertEqual(resp.code, 401, resp)
            self.assertEqual(resp.json["errcode"], "M_FORBIDDEN")
        self.assertLimited(await self.request("POST", path, attempt(TEST_PASSWORD), token=token))
        self.advance(1)
        resp = await self.request("POST", path, attempt(TEST_PASSWORD), token=token)
        self.assertEqual(resp.code, 200, resp)


class HashingOverloadTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"password_hashing": {"max_pending": 2}}

    async def test_login_refused_rather_than_queued(self) -> None:
        await self.register("olga")
        hasher = self.hs.registration._hasher  # noqa: SLF001
        gate = threading.Event()
        held = [defer.ensureDeferred(hasher.run(gate.wait)) for _ in range(2)]
        try:
            resp = await self.login("olga")
            self.assertMatrixError(resp, 429, "M_LIMIT_EXCEEDED")
            self.assertGreater(resp.json["retry_after_ms"], 0)
            self.assertEqual(resp.header("Retry-After"), "1")
            reg = await self.request("POST", f"{CS}/register", {"username": "x", "password": TEST_PASSWORD})
            self.assertEqual(reg.code, 401, reg)  # no hashing before UIA
        finally:
            gate.set()
            await defer.gatherResults(held)
        self.assertEqual((await self.login("olga")).code, 200)
