"""End to end: matrix-nio against a running ``parley run`` (register, login, whoami,
refresh, logout, devices).

Why a real client against a real process: the REST tests speak to handlers we wrote
ourselves with requests we wrote ourselves, so they cannot catch a response shape
that is valid in our heads but that real client code rejects. matrix-nio validates
every response against its own JSON schemas, so these tests fail if Parley drifts
from what clients actually accept -- and the server here is started through the
same ``generate-config --dev`` + ``run`` path as ``make run``.

How: nio is asyncio, trial runs Twisted. Each scenario runs in its own event loop
(``asyncio.run``) on a worker thread via ``deferToThread``; the test awaits that
Deferred. Every request has a timeout and every scenario an overall deadline, so
a hung server fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DevicesResponse,
    ErrorResponse,
    LoginError,
    LoginResponse,
    LogoutResponse,
    RegisterResponse,
    WhoamiError,
    WhoamiResponse,
)
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import ServerProcess

PASSWORD = "correct-horse-battery-staple"
#: Per HTTP request (nio's own timeout).
REQUEST_TIMEOUT_S = 10.0
#: Whole nio scenario; below trial's ``timeout`` so we report our own error first.
SCENARIO_TIMEOUT_S = 60.0

_R = TypeVar("_R")


def http_status(resp: object) -> int | None:
    """The HTTP status behind a nio response object (nio keeps the aiohttp response)."""
    transport = getattr(resp, "transport_response", None)
    return None if transport is None else int(transport.status)


class NioSession:
    """Creates nio clients for one scenario and closes them all at the end."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._clients: list[AsyncClient] = []

    def client(self, user: str = "") -> AsyncClient:
        # max_timeouts=0 / max_limit_exceeded=0: nio would otherwise retry timeouts
        # forever and sleep on 429s; a test wants the first failure, visibly.
        config = AsyncClientConfig(request_timeout=REQUEST_TIMEOUT_S, max_timeouts=0,
                                   max_limit_exceeded=0, encryption_enabled=False)
        c = AsyncClient(self.base_url, user, config=config)
        self._clients.append(c)
        return c

    async def close(self) -> None:
        for c in self._clients:
            await c.close()

    async def whoami_with(self, token: str) -> WhoamiResponse | WhoamiError:
        """``whoami`` with an arbitrary token, on a throwaway client."""
        probe = self.client()
        probe.access_token = token
        return await probe.whoami()

    async def refresh(self, client: AsyncClient, refresh_token: str) -> tuple[int, dict[str, Any]]:
        """POST /v3/refresh. nio 0.26 has no refresh-token API at all (no ``refresh()``,
        and ``LoginResponse`` drops ``refresh_token``), so this one step goes through
        nio's raw transport ``AsyncClient.send`` -- same aiohttp session, no auth header.
        """
        resp = await client.send(
            "POST", "/_matrix/client/v3/refresh", json.dumps({"refresh_token": refresh_token}),
            {"Content-Type": "application/json"}, timeout=REQUEST_TIMEOUT_S,
        )
        body = await resp.json(content_type=None)
        return resp.status, body


class NioAccountsTest(unittest.TestCase):
    """Account lifecycle through matrix-nio, one fresh server per test."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.server = ServerProcess()
        self.addCleanup(self.server.stop)
        # start() blocks until /versions answers (bounded); keep the reactor free.
        await threads.deferToThread(self.server.start)
        self.suffix = secrets.token_hex(3)

    async def run_nio(self, scenario: Callable[[NioSession], Awaitable[None]]) -> None:
        await run_nio_scenario(self, self.server, NioSession, scenario, SCENARIO_TIMEOUT_S)

    # -- assertions over nio responses ---------------------------------------

    def expect(self, resp: object, cls: type[_R]) -> _R:
        """``resp`` must be a ``cls`` (nio returns error objects rather than raising)."""
        if not isinstance(resp, cls):
            raise self.failureException(
                f"expected {cls.__name__}, got {type(resp).__name__}: {resp} "
                f"(HTTP {http_status(resp)})")
        return resp

    def assert_whoami(self, resp: WhoamiResponse | WhoamiError, user_id: str,
                      device_id: str) -> None:
        who = self.expect(resp, WhoamiResponse)
        self.assertEqual(who.user_id, user_id)
        self.assertEqual(who.device_id, device_id)

    def assert_error(self, resp: object, cls: type[ErrorResponse], status: int,
                     errcode: str) -> ErrorResponse:
        """``resp`` is the nio error ``cls`` for exactly this HTTP status and errcode."""
        err = self.expect(resp, cls)
        self.assertEqual((http_status(err), err.status_code), (status, errcode), str(err))
        return err

    def assert_unknown_token(self, resp: WhoamiResponse | WhoamiError) -> None:
        """The token is dead: 401 with ``M_UNKNOWN_TOKEN`` (not e.g. 403 or 500)."""
        self.assert_error(resp, WhoamiError, 401, "M_UNKNOWN_TOKEN")

    # -- scenarios ---------------------------------------------------------

    async def test_register_login_whoami_devices_logout(self) -> None:
        localpart = f"alice{self.suffix}"
        user_id = f"@{localpart}:localhost"

        async def scenario(s: NioSession) -> None:
            # 1. Register through nio's own flow (UIA m.login.dummy).
            phone = s.client(localpart)
            reg = self.expect(await phone.register(localpart, PASSWORD, device_name="alice's phone"),
                              RegisterResponse)
            self.assertEqual(reg.user_id, user_id)
            self.assertTrue(reg.device_id)
            self.assertEqual(phone.access_token, reg.access_token)  # nio adopted the session
            self.assert_whoami(await phone.whoami(), user_id, reg.device_id)

            # 2. Password login from a second device, with nio's login().
            laptop = s.client(localpart)
            login = self.expect(await laptop.login(PASSWORD, device_name="alice's laptop"),
                                LoginResponse)
            self.assertEqual(login.user_id, user_id)
            self.assertNotEqual(login.device_id, reg.device_id)
            self.assertNotEqual(login.access_token, reg.access_token)
            self.assert_whoami(await laptop.whoami(), user_id, login.device_id)

            # 6. Both devices are listed, with the names the clients gave them.
            devices = self.expect(await laptop.devices(), DevicesResponse)
            self.assertEqual({d.id: d.display_name for d in devices.devices},
                             {reg.device_id: "alice's phone", login.device_id: "alice's laptop"})

            # 5. Logout ends exactly that device's session (token and device).
            self.expect(await laptop.logout(), LogoutResponse)
            self.assertFalse(laptop.logged_in)
            self.assert_unknown_token(await s.whoami_with(login.access_token))
            self.assert_whoami(await phone.whoami(), user_id, reg.device_id)
            devices = self.expect(await phone.devices(), DevicesResponse)
            self.assertEqual([d.id for d in devices.devices], [reg.device_id])

        await self.run_nio(scenario)

    async def test_refresh_rotates_and_reuse_revokes_session(self) -> None:
        localpart = f"alice{self.suffix}"
        user_id = f"@{localpart}:localhost"

        async def scenario(s: NioSession) -> None:
            phone = s.client(localpart)
            reg = self.expect(await phone.register(localpart, PASSWORD, device_name="phone"),
                              RegisterResponse)

            # nio's login() cannot ask for a refresh token; login_raw is nio's own
            # way to send a custom login body, and still goes through nio's parsing.
            laptop = s.client(localpart)
            login = self.expect(await laptop.login_raw({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": PASSWORD,
                "initial_device_display_name": "laptop",
                "refresh_token": True,
            }), LoginResponse)
            assert login.transport_response is not None
            # nio's LoginResponse drops refresh_token/expires_in_ms: read the raw body.
            body = await login.transport_response.json()
            rt1 = body.get("refresh_token")
            self.assertIsInstance(rt1, str, body)
            self.assertIsInstance(body.get("expires_in_ms"), int, body)
            self.assertGreater(body["expires_in_ms"], 0)
            at1 = login.access_token
            self.assert_whoami(await laptop.whoami(), user_id, login.device_id)

            # 3. Refresh: a new access token and a new (rotated) refresh token.
            status, refreshed = await s.refresh(laptop, rt1)
            self.assertEqual(status, 200, refreshed)
            at2, rt2 = refreshed.get("access_token"), refreshed.get("refresh_token")
            self.assertIsInstance(at2, str, refreshed)
            self.assertIsInstance(rt2, str, refreshed)
            self.assertNotEqual(at2, at1)
            self.assertNotEqual(rt2, rt1)
            self.assertIsInstance(refreshed.get("expires_in_ms"), int, refreshed)
            laptop.access_token = at2
            self.assert_whoami(await laptop.whoami(), user_id, login.device_id)

            # Replaying the used refresh token is treated as theft: refused, and
            # the whole session (every token minted from it) is revoked.
            status, replay = await s.refresh(laptop, rt1)
            self.assertEqual((status, replay.get("errcode")), (401, "M_UNKNOWN_TOKEN"), replay)
            self.assert_unknown_token(await s.whoami_with(at2))
            status, after = await s.refresh(laptop, rt2)
            self.assertEqual((status, after.get("errcode")), (401, "M_UNKNOWN_TOKEN"), after)

            # Only that session: the phone's independent session is untouched.
            self.assert_whoami(await phone.whoami(), user_id, reg.device_id)

        await self.run_nio(scenario)

    async def test_wrong_password_is_forbidden(self) -> None:
        localpart = f"alice{self.suffix}"

        async def scenario(s: NioSession) -> None:
            self.expect(await s.client(localpart).register(localpart, PASSWORD), RegisterResponse)

            # 4. Wrong password -> nio LoginError, 403 M_FORBIDDEN, no token.
            client = s.client(localpart)
            bad = self.assert_error(await client.login("not-" + PASSWORD, device_name="attacker"),
                                    LoginError, 403, "M_FORBIDDEN")
            self.assertFalse(client.logged_in)

            # An unknown user gets the very same answer (no account enumeration).
            ghost = self.assert_error(await s.client(f"ghost{self.suffix}").login(PASSWORD),
                                      LoginError, 403, "M_FORBIDDEN")
            self.assertEqual(ghost.message, bad.message)

            # The right password still works afterwards.
            self.expect(await client.login(PASSWORD), LoginResponse)
            self.assertTrue(client.logged_in)

        await self.run_nio(scenario)

    async def test_devices_of_unnamed_device(self) -> None:
        """A client that gives no device name must still be able to list devices.

        nio 0.26's schema requires ``display_name`` and ``last_seen_*`` to be present;
        Parley shows an unnamed device's id as its name (``null`` would break the
        spec's schema), and always knows last-seen from the login.
        """
        localpart = f"alice{self.suffix}"

        async def scenario(s: NioSession) -> None:
            client = s.client(localpart)
            reg = self.expect(await client.register(localpart, PASSWORD), RegisterResponse)
            devices = self.expect(await client.devices(), DevicesResponse)
            self.assertEqual([(d.id, d.display_name) for d in devices.devices],
                             [(reg.device_id, reg.device_id)])

        await self.run_nio(scenario)
