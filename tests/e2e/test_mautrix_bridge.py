"""End to end: a real application service framework (PyPI ``mautrix``, its
``AppService`` and ``IntentAPI``, as the mautrix bridges use them) against a running
``parley run`` with the service's registration file, and a matrix-nio user.

The bridge registers a puppet user, joins a room it is invited to and relays messages
both ways. Then the bridge goes down, messages are sent, Parley is killed (SIGKILL)
with those events queued, and both come back: the bridge receives every queued event
exactly once and nothing it had acknowledged before.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

import yaml
from nio import RegisterResponse, RoomCreateResponse, RoomMessageText, RoomSendResponse
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.server_process import ServerProcess, free_port
from tests.e2e.test_nio_accounts import PASSWORD, NioSession

try:
    from mautrix.appservice import AppService
    from mautrix.appservice.state_store.memory import ASStateStore
    from mautrix.client.state_store import MemoryStateStore
    from mautrix.types import Event, EventType
except ImportError as e:  # pragma: no cover - the test extra installs it
    AppService = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR = str(e)

SCENARIO_TIMEOUT_S = 90.0
DOMAIN = "localhost"


if AppService is not None:
    class _MemoryASStateStore(MemoryStateStore, ASStateStore):
        """mautrix's in-memory state store for an appservice (its default is a file)."""

        def __init__(self) -> None:
            MemoryStateStore.__init__(self)
            ASStateStore.__init__(self)


class Bridge:
    """One mautrix ``AppService`` on a fixed port, recording the room messages it gets."""

    def __init__(self, base_url: str, port: int, as_token: str, hs_token: str) -> None:
        self.port = port
        self.messages: list[tuple[str, str, str]] = []  # (event id, sender, body)
        self._got = asyncio.Event()
        self.appserv = AppService(
            server=base_url, domain=DOMAIN, as_token=as_token, hs_token=hs_token,
            bot_localpart="bridgebot", id="mautrix-test", state_store=_MemoryASStateStore())
        self.appserv.matrix_event_handler(self._on_event)

    async def _on_event(self, evt: Event) -> None:
        if evt.type == EventType.ROOM_MESSAGE:
            self.messages.append((evt.event_id, evt.sender, evt.content.body))
            self._got.set()

    async def start(self) -> None:
        await self.appserv.start(host="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        await self.appserv.stop()

    async def wait_for(self, body: str, timeout: float = 20) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for event_id, _, got in self.messages:
                if got == body:
                    return event_id
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"the bridge never got {body!r}: {self.messages}")
            self._got.clear()
            try:
                await asyncio.wait_for(self._got.wait(), left)
            except TimeoutError:
                pass


class MautrixBridgeTest(unittest.TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        if AppService is None:
            raise unittest.SkipTest(f"mautrix is not installed ({_IMPORT_ERROR}); "
                                    "`make install` installs the test extra")
        self.as_port = free_port()
        self.as_token = secrets.token_urlsafe(24)
        self.hs_token = secrets.token_urlsafe(24)
        reg_dir = os.path.abspath(self.mktemp())
        os.makedirs(reg_dir)
        path = os.path.join(reg_dir, "mautrix-test.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({
                "id": "mautrix-test", "url": f"http://127.0.0.1:{self.as_port}",
                "as_token": self.as_token, "hs_token": self.hs_token,
                "sender_localpart": "bridgebot", "rate_limited": False,
                "namespaces": {"users": [{"regex": f"@bridge_.*:{DOMAIN}", "exclusive": True}],
                               "aliases": [], "rooms": []},
            }, f)
        self.server = ServerProcess(config_overrides={"app_service_config_files": [path]})
        self.addCleanup(self.server.stop)
        await threads.deferToThread(self.server.start)

    async def test_puppet_relays_both_ways_and_queued_events_survive_a_crash(self) -> None:
        server = self.server
        suffix = secrets.token_hex(3)

        async def scenario() -> None:
            session = NioSession(server.base_url)
            bridge = Bridge(server.base_url, self.as_port, self.as_token, self.hs_token)
            try:
                await bridge.start()
                bob = session.client(f"bob{suffix}")
                reg = await bob.register(f"bob{suffix}", PASSWORD)
                self.assertIsInstance(reg, RegisterResponse, str(reg))
                room = await bob.room_create(name="bridged")
                self.assertIsInstance(room, RoomCreateResponse, str(room))
                room_id = room.room_id

                # The bridge's puppet: registered through the appservice API, joins.
                puppet_id = f"@bridge_alice{suffix}:{DOMAIN}"
                puppet = bridge.appserv.intent.user(puppet_id)
                await puppet.ensure_registered()
                await puppet.set_displayname("Alice (bridged)")
                invited = await bob.room_invite(room_id, puppet_id)
                self.assertFalse(getattr(invited, "status_code", None), str(invited))
                await puppet.join_room(room_id)

                # Matrix -> bridge.
                sent = await bob.room_send(room_id, "m.room.message",
                                           {"msgtype": "m.text", "body": "hello bridge"})
                self.assertIsInstance(sent, RoomSendResponse, str(sent))
                self.assertEqual(await bridge.wait_for("hello bridge"), sent.event_id)

                # Bridge -> Matrix: bob's nio client sees the puppet's message.
                await bob.sync(timeout=0)
                relayed = await puppet.send_text(room_id, "hello from the other network")
                seen: list[Any] = []
                for _ in range(10):
                    resp = await bob.sync(timeout=3000)
                    seen += [e for e in resp.rooms.join.get(room_id, _Empty()).timeline.events
                             if isinstance(e, RoomMessageText)]
                    if any(e.event_id == relayed for e in seen):
                        break
                match = [e for e in seen if e.event_id == relayed]
                self.assertEqual([(e.sender, e.body) for e in match],
                                 [(puppet_id, "hello from the other network")])

                # The bridge goes away; messages queue; Parley crashes with them queued.
                await bridge.stop()
                queued = []
                for n in (1, 2):
                    r = await bob.room_send(room_id, "m.room.message",
                                            {"msgtype": "m.text", "body": f"queued {n}"})
                    self.assertIsInstance(r, RoomSendResponse, str(r))
                    queued.append(r.event_id)
                await asyncio.get_running_loop().run_in_executor(None, server.restart, True)

                # The bridge comes back; Parley's retry (with backoff) delivers every
                # queued event once, and not the one acknowledged before the crash.
                bridge = Bridge(server.base_url, self.as_port, self.as_token, self.hs_token)
                await bridge.start()
                self.assertEqual(await bridge.wait_for("queued 1", timeout=30), queued[0])
                self.assertEqual(await bridge.wait_for("queued 2", timeout=30), queued[1])
                await asyncio.sleep(1.0)
                ids = [m[0] for m in bridge.messages]
                self.assertEqual(sorted(ids), sorted(set(ids)), bridge.messages)
                self.assertNotIn(sent.event_id, ids)
            finally:
                await bridge.stop()
                await session.close()

        async def bounded() -> None:
            await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S)

        try:
            await threads.deferToThread(asyncio.run, bounded())
        except Exception as e:
            what = str(e) if isinstance(e, self.failureException) else f"{type(e).__name__}: {e}"
            raise self.failureException(
                f"{what}\n--- server log (tail) ---\n{server.log_tail()}") from e


class _Empty:
    """Stands in for a room missing from a sync response."""

    class timeline:  # noqa: N801 (mirrors nio's attribute)
        events: list[Any] = []
