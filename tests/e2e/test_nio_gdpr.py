"""End to end with matrix-nio against ``parley run``: a user exports their data and
downloads the archive; then erases their account, and a member who joins afterwards
and syncs afresh is not served the erased user's messages.

nio has no API for the export or for ``erase``, so those requests go through nio's raw
transport (with its access token); everything else is nio's own API.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import zipfile
from typing import Any
from urllib.parse import urlsplit

from nio import (
    JoinResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    UploadResponse,
)
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import ServerProcess
from tests.e2e.test_nio_accounts import PASSWORD, SCENARIO_TIMEOUT_S, NioSession
from tests.e2e.test_nio_mfa import raw, raw_get

EXPORT = "/_parley/client/v1/export"
SECRET = "the plans are in the old mill"


async def with_password(client: Any, method: str, path: str, body: dict[str, Any],
                        localpart: str) -> tuple[int, dict[str, Any]]:
    """A UIA-protected request: the 401 round, then the password stage."""
    status, first = await raw(client, method, path, body)
    if status != 401:
        return status, first
    return await raw(client, method, path, {**body, "auth": {
        "type": "m.login.password", "session": first["session"], "password": PASSWORD,
        "identifier": {"type": "m.id.user", "user": localpart}}})


class NioGdprTest(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.server = ServerProcess(config_overrides={"gdpr": {"erasure_grace_period": 0}})
        self.addCleanup(self.server.stop)
        await threads.deferToThread(self.server.start)
        self.suffix = secrets.token_hex(3)

    async def test_export_download_then_erase(self) -> None:
        alice_lp, bob_lp, carol_lp = (f"{n}{self.suffix}" for n in ("alice", "bob", "carol"))

        async def scenario(s: NioSession) -> None:
            alice, bob, carol = s.client(alice_lp), s.client(bob_lp), s.client(carol_lp)
            for client, lp in ((alice, alice_lp), (bob, bob_lp), (carol, carol_lp)):
                reg = await client.register(lp, PASSWORD)
                self.assertIsInstance(reg, RegisterResponse, str(reg))
            room = await alice.room_create(name="mill", initial_state=[{
                                               "type": "m.room.join_rules", "state_key": "",
                                               "content": {"join_rule": "public"}}])
            self.assertIsInstance(room, RoomCreateResponse, str(room))
            joined = await bob.join(room.room_id)
            self.assertIsInstance(joined, JoinResponse, str(joined))
            sent = await alice.room_send(room.room_id, "m.room.message",
                                         {"msgtype": "m.text", "body": SECRET})
            self.assertIsInstance(sent, RoomSendResponse, str(sent))
            picture = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64)
            up, _ = await alice.upload(lambda *_: io.BytesIO(picture), "image/png",
                                       "mill.png", filesize=len(picture))
            self.assertIsInstance(up, UploadResponse, str(up))

            # Access request: an export behind UIA, followed to completion.
            status, asked = await with_password(alice, "POST", EXPORT, {}, alice_lp)
            self.assertEqual(status, 200, asked)
            export_id = asked["export_id"]
            state: dict[str, Any] = {}
            for _ in range(100):
                status, state = await raw_get(alice, f"{EXPORT}/{export_id}")
                self.assertEqual(status, 200, state)
                if state["status"] in ("complete", "failed"):
                    break
                await asyncio.sleep(0.2)
            self.assertEqual(state["status"], "complete", state)
            # The link works without a token of the user's (it carries its own).
            link = urlsplit(state["download_url"])
            resp = await s.client().send("GET", f"{link.path}?{link.query}", None, {})
            self.assertEqual(resp.status, 200)
            archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
            names = archive.namelist()
            everything = b"".join(archive.read(n) for n in names)
            self.assertIn(SECRET.encode(), everything)  # their own events
            self.assertIn(picture, everything)          # their media, as stored
            self.assertIn(sent.event_id.encode(), everything)
            self.assertIn(f"@{alice_lp}:localhost".encode(), everything)

            # Erasure: deactivate with erase, behind UIA.
            status, done = await with_password(alice, "POST",
                                               "/_matrix/client/v3/account/deactivate",
                                               {"erase": True}, alice_lp)
            self.assertEqual(status, 200, done)
            self.assertEqual((await alice.whoami()).transport_response.status, 401)

            # Carol joins afterwards and reads the room from scratch: the message is
            # there as an event, without its content.
            joined = await carol.join(room.room_id)
            self.assertIsInstance(joined, JoinResponse, str(joined))
            history = await carol.room_messages(room.room_id, start="", limit=50,
                                                direction="b")
            self.assertIsInstance(history, RoomMessagesResponse, str(history))
            found = [e for e in history.chunk if e.event_id == sent.event_id]
            self.assertEqual(len(found), 1, [e.event_id for e in history.chunk])
            self.assertNotIn("body", found[0].source.get("content", {}))
            status, body = await raw_get(carol, "/_matrix/client/v3/rooms/"
                                         f"{room.room_id}/event/{sent.event_id}")
            self.assertNotIn(SECRET, json.dumps(body))
            # And the erased user's media is gone once the purge has run (grace 0).
            server, media_id = up.content_uri[len("mxc://"):].split("/", 1)
            for _ in range(50):
                resp = await carol.send(
                    "GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", None,
                    {"Authorization": f"Bearer {carol.access_token}"})
                if resp.status == 404:
                    break
                await asyncio.sleep(0.2)
            self.assertEqual(resp.status, 404)

        await run_nio_scenario(self, self.server, NioSession, scenario, SCENARIO_TIMEOUT_S)
