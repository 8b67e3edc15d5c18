"""End to end: real E2EE (matrix-nio + vodozemac olm/megolm) against a running ``parley run``.

Scenario (E2EE issue): alice, bob and carol register; each logs in with an encrypting
nio client (own crypto store) and uploads device + one-time keys. alice creates an
encrypted room (``m.room.encryption`` megolm in ``initial_state``) inviting bob; bob
joins. alice's message reaches bob as ciphertext (the server only ever holds an
``m.room.encrypted`` event: checked over plain HTTP through ``/event`` and
``/messages``) and bob's client decrypts it after receiving the megolm key as an olm
to-device message; bob's reply is decrypted by alice the same way. carol joins later:
alice's earlier message stays undecryptable for her (``MegolmEvent``) while a message
sent after her join decrypts. alice sends an encrypted attachment which bob downloads
and decrypts to the same bytes. With ``e2ee: {policy: encrypted_rooms}`` a plaintext
``m.room.message`` into the encrypted room is refused while ciphertext is accepted.

Exercised server side: /keys/upload, /keys/query, /keys/claim, /sendToDevice, to_device
and device_lists / one-time-key counts in /sync, media upload/download.

Same machinery as ``test_nio_rooms``: nio runs in ``asyncio.run`` on a worker thread,
every request and the whole scenario are bounded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    JoinResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomEncryptedFile,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendError,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.test_nio_accounts import PASSWORD, REQUEST_TIMEOUT_S, http_status
from tests.e2e.test_nio_rooms import RoomsServerProcess

MEGOLM = "m.megolm.v1.aes-sha2"
ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
#: Whole nio scenario; below trial's ``timeout`` so we report our own error first.
SCENARIO_TIMEOUT_S = 90.0
#: How long to keep syncing while waiting for a given event to show up.
ARRIVAL_TIMEOUT_S = 20.0

_R = TypeVar("_R")


class E2eeSession:
    """Creates nio clients for one scenario (plain ones, and encrypting ones each with its
    own crypto store dir) and closes them all at the end."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._clients: list[AsyncClient] = []
        self._dirs: list[str] = []

    def plain(self, user: str = "") -> AsyncClient:
        config = AsyncClientConfig(request_timeout=REQUEST_TIMEOUT_S, max_timeouts=0,
                                   max_limit_exceeded=0, encryption_enabled=False)
        c = AsyncClient(self.base_url, user, config=config)
        self._clients.append(c)
        return c

    def encrypting(self, user_id: str) -> AsyncClient:
        store = tempfile.mkdtemp(prefix="parley-e2e-nio-store-")
        self._dirs.append(store)
        config = AsyncClientConfig(request_timeout=REQUEST_TIMEOUT_S, max_timeouts=0,
                                   max_limit_exceeded=0, encryption_enabled=True,
                                   store_sync_tokens=True)
        c = AsyncClient(self.base_url, user_id, store_path=store, config=config)
        self._clients.append(c)
        return c

    async def close(self) -> None:
        for c in self._clients:
            await c.close()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    async def raw(client: AsyncClient, method: str, path: str,
                  body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """A plain HTTP request with ``client``'s token through nio's transport (no
        parsing, no decryption): what the server itself holds."""
        headers = {"Authorization": f"Bearer {client.access_token}",
                   "Content-Type": "application/json"}
        resp = await client.send(method, path, None if body is None else json.dumps(body),
                                 headers, timeout=REQUEST_TIMEOUT_S)
        return resp.status, await resp.json(content_type=None)


class NioE2eeTest(unittest.TestCase):
    timeout = 150

    config_overrides: dict[str, Any] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        self.server = RoomsServerProcess(config_overrides=self.config_overrides)
        self.addCleanup(self.server.stop)
        await threads.deferToThread(self.server.start)

    # -- helpers -----------------------------------------------------------------

    def expect(self, resp: object, cls: type[_R], step: str = "") -> _R:
        if not isinstance(resp, cls):
            raise self.failureException(
                f"{step + ': ' if step else ''}expected {cls.__name__}, got "
                f"{type(resp).__name__}: {resp} (HTTP {http_status(resp)})")
        return resp

    async def sync(self, client: AsyncClient, timeout: int = 0) -> SyncResponse:
        return self.expect(await client.sync(timeout=timeout, full_state=False), SyncResponse,
                           f"/sync for {client.user_id}")

    async def sync_until(self, client: AsyncClient, room_id: str,
                         found: Callable[[Any], bool], what: str) -> Any:
        """Sync ``client`` until its joined timeline in ``room_id`` has an event for which
        ``found`` holds (after nio's decryption); bounded by :data:`ARRIVAL_TIMEOUT_S`."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        seen: list[str] = []
        while time.monotonic() < deadline:
            resp = await self.sync(client, timeout=1000)
            room = resp.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                seen.append(type(event).__name__)
                if found(event):
                    return event
        raise self.failureException(f"{client.user_id} never got {what} in {room_id}; "
                                    f"timeline event classes seen: {seen}")

    async def login_with_keys(self, s: E2eeSession, user_id: str, device: str) -> AsyncClient:
        """An encrypting client for ``user_id``: login, then upload device and one-time keys."""
        client = s.encrypting(user_id)
        self.expect(await client.login(PASSWORD, device_name=device), LoginResponse,
                    f"login {user_id}")
        self.assertIsNotNone(client.olm, "nio did not load its olm machine after login")
        self.assertTrue(client.should_upload_keys)
        up = self.expect(await client.keys_upload(), KeysUploadResponse,
                         f"POST /keys/upload for {user_id}")
        self.assertGreater(up.signed_curve25519_count, 0, "no one-time keys counted")
        sync = await self.sync(client)
        self.assertEqual(sync.device_key_count.signed_curve25519, up.signed_curve25519_count,
                         "/sync device_one_time_keys_count disagrees with /keys/upload")
        self.assertFalse(client.should_upload_keys)
        return client

    async def query_keys(self, client: AsyncClient) -> None:
        if client.should_query_keys:
            self.expect(await client.keys_query(), KeysQueryResponse,
                        f"POST /keys/query for {client.user_id}")

    async def send_encrypted(self, client: AsyncClient, room_id: str,
                             content: dict[str, Any]) -> str:
        await self.query_keys(client)
        resp = await client.room_send(room_id, "m.room.message", content,
                                      ignore_unverified_devices=True)
        return self.expect(resp, RoomSendResponse, f"encrypted send by {client.user_id}").event_id

    async def register_all(self, s: E2eeSession, *names: str) -> list[str]:
        ids = []
        for name in names:
            resp = await s.plain().register(name, PASSWORD)
            ids.append(self.expect(resp, RegisterResponse, f"register {name}").user_id)
        return ids

    async def create_encrypted_room(self, alice: AsyncClient, invite: list[str]) -> str:
        resp = await alice.room_create(initial_state=[ENCRYPTION_STATE], invite=invite)
        room_id = self.expect(resp, RoomCreateResponse, "createRoom (encrypted)").room_id
        await self.sync(alice)
        self.assertTrue(alice.rooms[room_id].encrypted, "room not seen as encrypted by nio")
        return room_id

    async def join(self, client: AsyncClient, room_id: str) -> None:
        await self.sync(client)
        self.assertIn(room_id, client.invited_rooms, f"{client.user_id} not invited")
        self.expect(await client.join(room_id), JoinResponse, f"join by {client.user_id}")
        await self.sync(client)

    async def assert_ciphertext_only(self, s: E2eeSession, reader: AsyncClient, room_id: str,
                                     event_id: str, secret: str) -> None:
        """The server holds only ``m.room.encrypted`` for ``event_id`` (``/event`` and
        ``/messages``), and ``secret`` appears nowhere in what it returns."""
        room = quote(room_id, safe="")
        status, body = await s.raw(
            reader, "GET", f"/_matrix/client/v3/rooms/{room}/event/{quote(event_id, safe='')}")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["type"], "m.room.encrypted", body)
        self.assertEqual(body["content"]["algorithm"], MEGOLM, body)
        self.assertIn("ciphertext", body["content"])
        self.assertNotIn(secret, json.dumps(body))
        status, page = await s.raw(
            reader, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50")
        self.assertEqual(status, 200, page)
        mine = [e for e in page["chunk"] if e["event_id"] == event_id]
        self.assertEqual([e["type"] for e in mine], ["m.room.encrypted"], page)
        self.assertNotIn(secret, json.dumps(page))
        self.assertNotIn("m.room.message", [e["type"] for e in page["chunk"]])

    async def run_nio(self, scenario: Callable[[E2eeSession], Awaitable[None]]) -> None:
        await run_nio_scenario(self, self.server, E2eeSession, scenario, SCENARIO_TIMEOUT_S)

    # -- tests -------------------------------------------------------------------

    async def test_encrypted_room_messages_late_joiner_and_attachment(self) -> None:
        async def scenario(s: E2eeSession) -> None:
            a_id, b_id, c_id = await self.register_all(s, "alice", "bob", "carol")
            alice = await self.login_with_keys(s, a_id, "alice-laptop")
            bob = await self.login_with_keys(s, b_id, "bob-phone")
            carol = await self.login_with_keys(s, c_id, "carol-tablet")

            room_id = await self.create_encrypted_room(alice, invite=[b_id])
            await self.join(bob, room_id)
            await self.sync(alice)

            # alice -> bob: the megolm key travels olm-encrypted via /keys/claim +
            # /sendToDevice; bob decrypts the room event.
            bob_otks = (await self.sync(bob)).device_key_count.signed_curve25519
            hello_id = await self.send_encrypted(alice, room_id,
                                                 {"msgtype": "m.text", "body": "hello bob"})
            got = await self.sync_until(bob, room_id, lambda e: e.event_id == hello_id,
                                        "alice's first message")
            self.assertIsInstance(got, RoomMessageText,
                                  f"bob could not decrypt alice's message: {got}")
            self.assertEqual((got.sender, got.body), (a_id, "hello bob"))
            await self.assert_ciphertext_only(s, bob, room_id, hello_id, "hello bob")
            # alice's /keys/claim used up one of bob's one-time keys; his /sync says so.
            self.assertEqual(bob.olm.uploaded_key_count, bob_otks - 1,
                             "bob's one-time key count after alice's /keys/claim")

            # bob -> alice, the other direction (bob's own outbound session).
            reply_id = await self.send_encrypted(bob, room_id,
                                                 {"msgtype": "m.text", "body": "hi alice"})
            got = await self.sync_until(alice, room_id, lambda e: e.event_id == reply_id,
                                        "bob's reply")
            self.assertIsInstance(got, RoomMessageText,
                                  f"alice could not decrypt bob's reply: {got}")
            self.assertEqual((got.sender, got.body), (b_id, "hi alice"))
            await self.assert_ciphertext_only(s, alice, room_id, reply_id, "hi alice")

            # carol joins later: the earlier message stays undecryptable for her.
            self.expect(await alice.room_invite(room_id, c_id), RoomInviteResponse,
                        "invite carol")
            await self.join(carol, room_id)
            page = self.expect(await carol.room_messages(room_id, start=carol.next_batch,
                                                         limit=50),
                               RoomMessagesResponse, "/messages for carol")
            early = [e for e in page.chunk if e.event_id == hello_id]
            self.assertEqual(len(early), 1, f"carol does not see the earlier event: {page.chunk}")
            self.assertIsInstance(early[0], MegolmEvent,
                                  f"carol decrypted a message from before she joined: {early[0]}")
            self.assertNotIn("hello bob", [getattr(e, "body", None) for e in page.chunk])

            # ...while one sent after her join decrypts (alice learns carol's device
            # through device_lists / /keys/query and shares the session with it).
            changed = (await self.sync(alice)).device_list.changed
            self.assertIn(c_id, changed, "alice's /sync device_lists.changed lacks carol")
            later_id = await self.send_encrypted(alice, room_id,
                                                 {"msgtype": "m.text", "body": "welcome carol"})
            got = await self.sync_until(carol, room_id, lambda e: e.event_id == later_id,
                                        "alice's message after carol joined")
            self.assertIsInstance(got, RoomMessageText,
                                  f"carol could not decrypt a message after her join: {got}")
            self.assertEqual(got.body, "welcome carol")

            # Encrypted attachment: the server only stores ciphertext bytes.
            plaintext = os.urandom(3000) + b"parley attachment"
            ciphertext, keys = encrypt_attachment(plaintext)
            up, _ = await alice.upload(io.BytesIO(ciphertext), content_type="application/octet-stream",
                                       filename="secret.bin", filesize=len(ciphertext))
            mxc = self.expect(up, UploadResponse, "media upload").content_uri
            file_info = {"url": mxc, "key": keys["key"], "iv": keys["iv"],
                         "hashes": keys["hashes"], "v": keys.get("v", "v2")}
            file_id = await self.send_encrypted(alice, room_id, {
                "msgtype": "m.file", "body": "secret.bin", "file": file_info,
                "info": {"mimetype": "application/octet-stream", "size": len(plaintext)}})
            got = await self.sync_until(bob, room_id, lambda e: e.event_id == file_id,
                                        "alice's encrypted file")
            self.assertIsInstance(got, RoomEncryptedFile, f"not a decrypted m.file: {got}")
            self.assertEqual(got.url, mxc)
            down = self.expect(await bob.download(got.url), DownloadResponse, "media download")
            self.assertEqual(down.body, ciphertext)
            self.assertNotIn(b"parley attachment", down.body)
            self.assertEqual(decrypt_attachment(down.body, got.key["k"], got.hashes["sha256"],
                                                got.iv), plaintext)

        await self.run_nio(scenario)


class NioE2eePolicyTest(NioE2eeTest):
    """Under ``e2ee: {policy: encrypted_rooms}``: real E2EE still works, plaintext into
    an encrypted room is refused."""

    # Inherits the full E2EE scenario, so it also runs under the policy.
    config_overrides: dict[str, Any] = {"e2ee": {"policy": "encrypted_rooms"}}  # noqa: RUF012

    async def test_plaintext_refused_in_encrypted_room(self) -> None:
        async def scenario(s: E2eeSession) -> None:
            a_id, b_id = await self.register_all(s, "alice", "bob")
            alice = await self.login_with_keys(s, a_id, "alice-laptop")
            bob = await self.login_with_keys(s, b_id, "bob-phone")
            room_id = await self.create_encrypted_room(alice, invite=[b_id])
            await self.join(bob, room_id)
            await self.sync(alice)

            # A client that does not encrypt (nio's room_send only encrypts with olm on).
            plain = s.plain(a_id)
            plain.access_token, plain.user_id = alice.access_token, a_id
            refused = await plain.room_send(room_id, "m.room.message",
                                            {"msgtype": "m.text", "body": "in the clear"})
            err = self.expect(refused, RoomSendError, "plaintext send under encrypted_rooms")
            self.assertEqual((http_status(err), err.status_code), (400, "M_FORBIDDEN"))
            self.assertIn("e2ee_only", json.dumps(err.transport_response and
                                                  await err.transport_response.json()))

            event_id = await self.send_encrypted(alice, room_id,
                                                 {"msgtype": "m.text", "body": "in secret"})
            got = await self.sync_until(bob, room_id, lambda e: e.event_id == event_id,
                                        "alice's encrypted message")
            self.assertIsInstance(got, RoomMessageText, f"bob could not decrypt: {got}")
            self.assertEqual(got.body, "in secret")
            await self.assert_ciphertext_only(s, bob, room_id, event_id, "in secret")

        await self.run_nio(scenario)
