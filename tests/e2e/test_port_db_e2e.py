"""End to end: a SQLite deployment filled by real E2EE clients moves to PostgreSQL.

A SQLite ``parley run`` is driven by matrix-nio (alice and bob register, log in with
encrypting clients and upload keys; an encrypted room; megolm messages both ways,
their keys shared as olm to-device messages; a custom to-device message left waiting
for bob; account data; a media upload). The server is stopped and ported with the
shipped command as a subprocess (``parley port-db --from old.yaml --to new.yaml``);
``parley run`` starts on the PostgreSQL config (same data dir, signing keys and port).
The same nio clients (same device ids, same crypto stores, their stored sync tokens)
log in again with the password, get the waiting to-device message in their next
incremental sync, decrypt the earlier messages with their stored megolm keys, read the
account data and the media back, and a new encrypted message from alice reaches bob.

Needs PostgreSQL (the port's target): skipped unless PARLEY_TEST_DB=postgres.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import quote

import yaml
from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    LoginResponse,
    RoomMessagesResponse,
    RoomMessageText,
    SyncResponse,
    UploadResponse,
)
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e import test_nio_e2ee
from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import _child_env
from tests.e2e.test_nio_accounts import PASSWORD, REQUEST_TIMEOUT_S
from tests.e2e.test_nio_e2ee import SCENARIO_TIMEOUT_S, E2eeSession
from tests.e2e.test_nio_rooms import RoomsServerProcess
from tests.harness import pg_settings, require_postgres, test_engine

#: The port of a small database (migrations of an empty schema included).
PORT_TIMEOUT_S = 180.0
MEDIA = os.urandom(2048) + b"ported media"
PING = "org.example.port_ping"


class PortedServer(RoomsServerProcess):
    """A SQLite server that :meth:`port_to_postgres` stops, ports and restarts on
    PostgreSQL (``stop`` then drops the schema and removes the data dir)."""

    def __init__(self) -> None:
        super().__init__(engine="sqlite")

    def port_to_postgres(self) -> subprocess.CompletedProcess[str]:
        """Stop the server (SIGTERM), write new.yaml (the old config with a PostgreSQL
        database), run ``parley port-db --from --to``; returns the command's result.
        The server is not started again here."""
        proc, self._proc = self._proc, None
        assert proc is not None and self.config_path is not None and self.tmp_dir is not None
        proc.terminate()
        proc.wait(timeout=30)
        with open(self.config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        self.pg_schema = "e2e_port_" + secrets.token_hex(8)
        config["database"] = {"engine": "postgres", **pg_settings(), "schema": self.pg_schema}
        old, new = self.config_path, os.path.join(self.tmp_dir, "new.yaml")
        with open(new, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        self.config_path = new
        return subprocess.run(
            [sys.executable, "-m", "homeserver", "port-db", "--from", old, "--to", new],
            capture_output=True, text=True, timeout=PORT_TIMEOUT_S, cwd=self.tmp_dir,
            env=_child_env(), check=False)

    def start_again(self) -> None:
        """``parley run -c new.yaml`` on the same data dir and port."""
        assert self.config_path is not None and self._log_file is not None
        self._log_file.write(b"\n--- started on PostgreSQL ---\n")
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.tmp_dir, env=_child_env())
        self._wait_until_serving()


class StoredSession(E2eeSession):
    """Encrypting clients whose crypto stores outlive the session (one dir per user,
    owned by the test), so a second session continues the same devices."""

    def __init__(self, base_url: str, stores: dict[str, str],
                 devices: dict[str, str] | None = None) -> None:
        super().__init__(base_url)
        self.stores, self.devices = stores, devices or {}

    def encrypting(self, user_id: str) -> AsyncClient:
        config = AsyncClientConfig(request_timeout=REQUEST_TIMEOUT_S, max_timeouts=0,
                                   max_limit_exceeded=0, encryption_enabled=True,
                                   store_sync_tokens=True)
        c = AsyncClient(self.base_url, user_id, device_id=self.devices.get(user_id),
                        store_path=self.stores[user_id], config=config)
        self._clients.append(c)
        return c


class PortDbE2eTest(unittest.TestCase):
    timeout = 420

    # The E2EE helpers of the nio e2ee tests (plain functions, shared as-is; the class
    # is not imported by name, or trial would run its tests here too).
    expect = test_nio_e2ee.NioE2eeTest.expect
    sync = test_nio_e2ee.NioE2eeTest.sync
    sync_until = test_nio_e2ee.NioE2eeTest.sync_until
    login_with_keys = test_nio_e2ee.NioE2eeTest.login_with_keys
    query_keys = test_nio_e2ee.NioE2eeTest.query_keys
    send_encrypted = test_nio_e2ee.NioE2eeTest.send_encrypted
    register_all = test_nio_e2ee.NioE2eeTest.register_all
    create_encrypted_room = test_nio_e2ee.NioE2eeTest.create_encrypted_room
    join = test_nio_e2ee.NioE2eeTest.join

    async def setUp(self) -> None:  # type: ignore[override]
        if test_engine() != "postgres":
            raise unittest.SkipTest("port-db needs PostgreSQL as its target "
                                    "(run with PARLEY_TEST_DB=postgres)")
        require_postgres()
        self.server = PortedServer()
        self.addCleanup(self.server.stop)
        self.stores = {u: tempfile.mkdtemp(prefix="parley-e2e-port-store-")
                       for u in ("@alice:localhost", "@bob:localhost")}
        for d in self.stores.values():
            self.addCleanup(shutil.rmtree, d, True)
        await threads.deferToThread(self.server.start)

    async def run_session(self, devices: dict[str, str] | None, scenario: Any) -> None:
        await run_nio_scenario(self, self.server,
                               lambda url: StoredSession(url, self.stores, devices),
                               scenario, SCENARIO_TIMEOUT_S)

    async def test_e2ee_deployment_survives_the_port(self) -> None:
        state: dict[str, Any] = {}

        async def before(s: StoredSession) -> None:
            a_id, b_id = await self.register_all(s, "alice", "bob")
            self.assertEqual(sorted((a_id, b_id)), sorted(self.stores))
            alice = await self.login_with_keys(s, a_id, "alice-laptop")
            bob = await self.login_with_keys(s, b_id, "bob-phone")
            room_id = await self.create_encrypted_room(alice, invite=[b_id])
            await self.join(bob, room_id)
            await self.sync(alice)
            hello = await self.send_encrypted(alice, room_id,
                                              {"msgtype": "m.text", "body": "hello before"})
            got = await self.sync_until(bob, room_id, lambda e: e.event_id == hello, "hello")
            self.assertIsInstance(got, RoomMessageText, f"bob could not decrypt: {got}")
            reply = await self.send_encrypted(bob, room_id,
                                              {"msgtype": "m.text", "body": "reply before"})
            got = await self.sync_until(alice, room_id, lambda e: e.event_id == reply, "reply")
            self.assertIsInstance(got, RoomMessageText, f"alice could not decrypt: {got}")
            status, body = await s.raw(
                alice, "PUT", f"/_matrix/client/v3/user/{quote(a_id)}/account_data/"
                "org.example.ported", {"kept": [1, 2, 3]})
            self.assertEqual(status, 200, body)
            up, _ = await alice.upload(io.BytesIO(MEDIA), content_type="application/octet-stream",
                                       filename="ported.bin", filesize=len(MEDIA))
            mxc = self.expect(up, UploadResponse, "media upload").content_uri
            # Left waiting for bob: his first sync after the port must deliver it.
            status, body = await s.raw(
                alice, "PUT", f"/_matrix/client/v3/sendToDevice/{PING}/port-txn-1",
                {"messages": {b_id: {bob.device_id: {"n": 1}}}})
            self.assertEqual(status, 200, body)
            state.update(alice=a_id, bob=b_id, room=room_id, hello=hello, reply=reply,
                         mxc=mxc, devices={a_id: alice.device_id, b_id: bob.device_id},
                         identity={a_id: alice.olm.account.identity_keys,
                                   b_id: bob.olm.account.identity_keys})

        await self.run_session(None, before)

        result = await threads.deferToThread(self.server.port_to_postgres)
        self.assertEqual(result.returncode, 0,
                         f"port-db failed:\n{result.stdout}\n{result.stderr}")
        self.assertIn("verified", result.stdout)
        self.assertNotIn("MISMATCH", result.stdout)
        self.assertIn("max copied", result.stdout)  # the stream positions were checked
        self.assertNotIn(pg_settings().get("password") or "\0", result.stdout + result.stderr)
        await threads.deferToThread(self.server.start_again)

        async def after(s: StoredSession) -> None:
            a_id, b_id, room_id = state["alice"], state["bob"], state["room"]
            clients: dict[str, AsyncClient] = {}
            first: dict[str, SyncResponse] = {}
            for user in (a_id, b_id):
                c = s.encrypting(user)
                login = self.expect(await c.login(PASSWORD), LoginResponse, f"login {user}")
                self.assertEqual(login.device_id, state["devices"][user], "a new device")
                self.assertIsNotNone(c.olm, "nio did not load its stored olm account")
                self.assertEqual(c.olm.account.identity_keys, state["identity"][user])
                self.assertTrue(c.loaded_sync_token, "no stored sync token to continue from")
                # Continuing from the pre-port token, with full state: nio keeps rooms in
                # memory only (and ignores a sync answer whose next_batch it already has,
                # so this is the first sync of the new client).
                first[user] = self.expect(await c.sync(timeout=0, full_state=True),
                                          SyncResponse, f"full-state /sync for {user}")
                self.assertIn(room_id, c.rooms)
                self.assertTrue(c.rooms[room_id].encrypted)
                clients[user] = c
            alice, bob = clients[a_id], clients[b_id]
            # bob continues from his pre-port sync token: the waiting to-device arrives.
            deadline, resp, pings = time.monotonic() + 20, first[b_id], []
            while True:
                pings = [e.source for e in resp.to_device_events
                         if e.source.get("type") == PING]
                if pings or time.monotonic() > deadline:
                    break
                resp = await self.sync(bob, timeout=1000)
            self.assertEqual([p["content"] for p in pings], [{"n": 1}])
            self.assertEqual(pings[0]["sender"], a_id)
            # The earlier messages decrypt with the keys each client stored.
            for client in (alice, bob):
                await self.sync(client)
                page = self.expect(await client.room_messages(room_id, start=client.next_batch,
                                                              limit=50),
                                   RoomMessagesResponse, f"/messages for {client.user_id}")
                bodies = {e.event_id: getattr(e, "body", type(e).__name__) for e in page.chunk}
                self.assertEqual((bodies.get(state["hello"]), bodies.get(state["reply"])),
                                 ("hello before", "reply before"), f"{client.user_id}: {bodies}")
            status, body = await s.raw(
                alice, "GET", f"/_matrix/client/v3/user/{quote(a_id)}/account_data/"
                "org.example.ported")
            self.assertEqual((status, body), (200, {"kept": [1, 2, 3]}))
            down = self.expect(await alice.download(state["mxc"]), DownloadResponse,
                               "media download")
            self.assertEqual(down.body, MEDIA)
            # A new message, after every ported position, reaches bob and decrypts.
            after_id = await self.send_encrypted(alice, room_id,
                                                 {"msgtype": "m.text", "body": "after the port"})
            got = await self.sync_until(bob, room_id, lambda e: e.event_id == after_id,
                                        "alice's message after the port")
            self.assertIsInstance(got, RoomMessageText, f"bob could not decrypt: {got}")
            self.assertEqual(got.body, "after the port")
            status, event = await s.raw(
                bob, "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/event/"
                f"{quote(after_id)}")
            self.assertEqual((status, event.get("type")), (200, "m.room.encrypted"),
                             json.dumps(event)[:300])

        await self.run_session(state["devices"], after)
