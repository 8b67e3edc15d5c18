"""End to end: sign in a second matrix-nio client with a login token, against a running
``parley run`` with ``login_tokens.enabled``.

nio has no API for ``POST /login/get_token``, so the signed-in client asks for the
token through nio's raw transport (UIA with its password); the new client then uses
nio's own ``login(token=...)`` (``m.login.token``) and works as the same user.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from nio import (
    JoinedRoomsResponse,
    LoginError,
    LoginInfoResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    WhoamiResponse,
)
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import ServerProcess
from tests.e2e.test_nio_accounts import PASSWORD, SCENARIO_TIMEOUT_S, NioSession
from tests.e2e.test_nio_mfa import raw

GET_TOKEN = "/_matrix/client/v1/login/get_token"


class NioLoginTokenTest(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.server = ServerProcess(config_overrides={"login_tokens": {"enabled": True}})
        self.addCleanup(self.server.stop)
        await threads.deferToThread(self.server.start)
        self.suffix = secrets.token_hex(3)

    async def run_nio(self, scenario: Callable[[NioSession], Awaitable[None]]) -> None:
        await run_nio_scenario(self, self.server, NioSession, scenario, SCENARIO_TIMEOUT_S)

    async def test_second_client_signs_in_with_a_login_token(self) -> None:
        localpart = f"tok{self.suffix}"
        user_id = f"@{localpart}:localhost"

        async def scenario(s: NioSession) -> None:
            phone = s.client(localpart)
            reg = await phone.register(localpart, PASSWORD, device_name="phone")
            self.assertIsInstance(reg, RegisterResponse, str(reg))
            room = await phone.room_create(name="notes")
            self.assertIsInstance(room, RoomCreateResponse, str(room))

            # An unauthenticated client sees the flow and that tokens can be had.
            laptop = s.client(localpart)
            info = await laptop.login_info()
            self.assertIsInstance(info, LoginInfoResponse, str(info))
            self.assertIn("m.login.token", info.flows)

            # The phone asks for a token: UIA with its password, every time.
            status, first = await raw(phone, "POST", GET_TOKEN, {})
            self.assertEqual(status, 401, first)
            status, issued = await raw(phone, "POST", GET_TOKEN, {"auth": {
                "type": "m.login.password", "session": first["session"], "password": PASSWORD,
                "identifier": {"type": "m.id.user", "user": localpart}}})
            self.assertEqual(status, 200, issued)
            self.assertEqual(issued["expires_in_ms"], 120_000)

            # The laptop signs in with it through nio's own token login.
            login = await laptop.login(token=issued["login_token"], device_name="laptop")
            self.assertIsInstance(login, LoginResponse, str(login))
            self.assertEqual(login.user_id, user_id)
            self.assertNotEqual(login.device_id, reg.device_id)
            who = await laptop.whoami()
            self.assertIsInstance(who, WhoamiResponse, str(who))
            self.assertEqual((who.user_id, who.device_id), (user_id, login.device_id))
            rooms = await laptop.joined_rooms()
            self.assertIsInstance(rooms, JoinedRoomsResponse, str(rooms))
            self.assertIn(room.room_id, rooms.rooms)

            # Single use: a third client cannot reuse it.
            tablet = s.client(localpart)
            again = await tablet.login(token=issued["login_token"], device_name="tablet")
            self.assertIsInstance(again, LoginError, str(again))
            self.assertEqual(again.status_code, "M_FORBIDDEN")
            # And the phone is still signed in.
            self.assertIsInstance(await phone.whoami(), WhoamiResponse)

        await self.run_nio(scenario)
