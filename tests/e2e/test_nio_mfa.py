"""End to end: TOTP two-factor login with matrix-nio against a running ``parley run``.

nio knows nothing of ``org.parley.totp``: what it can do, it does (register, password
login, ``login_raw`` for the second step, whoami); the Parley-only enrolment endpoints go
through nio's raw transport (``AsyncClient.send``). The server runs in real time, so
codes are computed from the wall clock. The login from a new device then reaches the
user as an ``m.server_notice`` in their server-notices room, found by nio's /sync.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pyotp
from nio import (
    AsyncClient,
    JoinResponse,
    LoginError,
    LoginResponse,
    RegisterResponse,
    SyncResponse,
    WhoamiResponse,
)
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import ServerProcess
from tests.e2e.test_nio_accounts import (
    PASSWORD,
    REQUEST_TIMEOUT_S,
    SCENARIO_TIMEOUT_S,
    NioSession,
    http_status,
)

MFA = "/_parley/client/v1/mfa"
TOTP = "org.parley.totp"


async def raw(client: AsyncClient, method: str, path: str,
              body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A request nio has no API for, on nio's own HTTP session, with its access token."""
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {client.access_token}"}
    resp = await client.send(method, path, json.dumps(body), headers,
                             timeout=REQUEST_TIMEOUT_S)
    return resp.status, await resp.json(content_type=None)


async def raw_get(client: AsyncClient, path: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {client.access_token}"}
    resp = await client.send("GET", path, None, headers, timeout=REQUEST_TIMEOUT_S)
    return resp.status, await resp.json(content_type=None)


async def wait_for_server_notices(client: AsyncClient, deadline_s: float = 20.0
                                  ) -> list[tuple[str, dict[str, Any]]]:
    """Sync (nio) until a ``m.server_notice`` message arrives: (room id, content) of
    each. An invite to the notices room is accepted on the way (the server joins the
    user itself with ``server_notices.auto_join``, the default). Alerts are raised off
    the login's path, so the notice may take a moment."""
    end = time.monotonic() + deadline_s
    found: list[tuple[str, dict[str, Any]]] = []
    while not found and time.monotonic() < end:
        resp = await client.sync(timeout=1000)
        assert isinstance(resp, SyncResponse), str(resp)
        for room_id in resp.rooms.invite:
            joined = await client.join(room_id)
            assert isinstance(joined, JoinResponse), str(joined)
        for room_id, info in resp.rooms.join.items():
            for ev in info.timeline.events:
                content = ev.source.get("content", {})
                if (ev.source.get("type") == "m.room.message"
                        and content.get("msgtype") == "m.server_notice"):
                    found.append((room_id, content))
    return found


class NioMfaTest(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.server = ServerProcess()
        self.addCleanup(self.server.stop)
        await threads.deferToThread(self.server.start)
        self.suffix = secrets.token_hex(3)

    async def run_nio(self, scenario: Callable[[NioSession], Awaitable[None]]) -> None:
        await run_nio_scenario(self, self.server, NioSession, scenario, SCENARIO_TIMEOUT_S)

    async def test_enrol_login_with_code_reused_code_fails(self) -> None:
        localpart = f"mfa{self.suffix}"
        user_id = f"@{localpart}:localhost"

        async def scenario(s: NioSession) -> None:
            phone = s.client(localpart)
            reg = await phone.register(localpart, PASSWORD, device_name="phone")
            self.assertIsInstance(reg, RegisterResponse, str(reg))

            # Enrol: UIA with the password, then confirm with a current code.
            status, first = await raw(phone, "POST", f"{MFA}/totp/enroll", {})
            self.assertEqual(status, 401, first)
            status, enrol = await raw(phone, "POST", f"{MFA}/totp/enroll", {"auth": {
                "type": "m.login.password", "session": first["session"], "password": PASSWORD,
                "identifier": {"type": "m.id.user", "user": localpart}}})
            self.assertEqual(status, 200, enrol)
            self.assertTrue(enrol["otpauth_uri"].startswith("otpauth://totp/"))
            totp = pyotp.TOTP(enrol["secret"])
            status, confirmed = await raw(phone, "POST", f"{MFA}/totp/confirm",
                                          {"code": totp.now()})
            self.assertEqual(status, 200, confirmed)
            self.assertEqual(len(confirmed["recovery_codes"]), 10)

            # nio's password login now gets the second-factor 401, which names the stage.
            laptop = s.client(localpart)
            denied = await laptop.login(PASSWORD, device_name="laptop")
            self.assertIsInstance(denied, LoginError, str(denied))
            self.assertEqual(http_status(denied), 401)
            self.assertIn(TOTP, denied.message)
            assert denied.transport_response is not None
            session = (await denied.transport_response.json())["session"]

            # The second step through nio's login_raw: a normal LoginResponse. The code
            # of the next time-step (accepted: clock drift window), as the enrolment
            # spent the current one.
            code = totp.at(time.time() + 30)
            login = await laptop.login_raw({"type": TOTP, "session": session, "code": code})
            self.assertIsInstance(login, LoginResponse, str(login))
            self.assertEqual(login.user_id, user_id)
            who = await laptop.whoami()
            self.assertIsInstance(who, WhoamiResponse, str(who))
            self.assertEqual(who.device_id, login.device_id)

            # The same code again, in a fresh login: refused.
            tablet = s.client(localpart)
            again = await tablet.login(PASSWORD, device_name="tablet")
            self.assertIsInstance(again, LoginError, str(again))
            assert again.transport_response is not None
            session2 = (await again.transport_response.json())["session"]
            replay = await tablet.login_raw({"type": TOTP, "session": session2, "code": code})
            self.assertIsInstance(replay, LoginError, str(replay))
            self.assertEqual((http_status(replay), replay.status_code), (401, "M_FORBIDDEN"))
            self.assertFalse(tablet.logged_in)

            # The sign-in from the new device ("laptop") was noticed: the user's phone
            # syncs and finds a server notice about it, in the room tagged as the
            # server-notices room.
            notices = await wait_for_server_notices(phone)
            self.assertTrue(notices, "no m.server_notice arrived by /sync")
            room_id, content = notices[-1]
            self.assertEqual(content["server_notice_type"], "org.parley.security_alert")
            self.assertIn("New sign-in", content["body"])
            self.assertIn(login.device_id, content["body"])
            status, tags = await raw_get(
                phone, f"/_matrix/client/v3/user/{quote(user_id)}/rooms/{quote(room_id)}/tags")
            self.assertEqual(status, 200, tags)
            self.assertIn("m.server_notice", tags["tags"])
            # Only the laptop's login: registration and the refused logins sent none.
            self.assertEqual(len(notices), 1, notices)

        await self.run_nio(scenario)
