"""An encrypted conversation between a matrix-nio client on each of two federating
servers (issue 16: "an encrypted conversation between a nio client on each server").

alice (on the room's host) creates an encrypted room inviting bob (on the other
server); bob joins over federation. alice's client queries bob's device keys (a
federated ``/keys/query``), claims one of his one-time keys (a federated
``/keys/claim``) and sends him the megolm session as an olm to-device message (an
``m.direct_to_device`` EDU); bob's client decrypts her message, and the same the other
way. nio is asyncio: :func:`encrypted_conversation` runs it in its own event loop, so
call it from a worker thread like the other blocking scenarios.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from tests.interop.client import PASSWORD, MatrixUser
from tests.interop.scenarios import Server

MEGOLM = "m.megolm.v1.aes-sha2"
REQUEST_TIMEOUT_S = 20.0
ARRIVAL_TIMEOUT_S = 40.0
SCENARIO_TIMEOUT_S = 120.0


def _expect(resp: Any, cls: type, step: str) -> Any:
    if not isinstance(resp, cls):
        raise AssertionError(f"{step}: expected {cls.__name__}, got {type(resp).__name__}: "
                             f"{resp}"[:2000])
    return resp


class _Clients:
    """Encrypting nio clients, each with its own crypto store, closed at the end."""

    def __init__(self) -> None:
        self._clients: list[AsyncClient] = []
        self._dirs: list[str] = []

    async def login(self, server: Server, user: MatrixUser, device: str) -> AsyncClient:
        store = tempfile.mkdtemp(prefix="parley-interop-nio-")
        self._dirs.append(store)
        config = AsyncClientConfig(request_timeout=REQUEST_TIMEOUT_S, max_timeouts=0,
                                   max_limit_exceeded=0, encryption_enabled=True,
                                   store_sync_tokens=True)
        client = AsyncClient(server.base_url, user.user_id, store_path=store, config=config)
        self._clients.append(client)
        _expect(await client.login(PASSWORD, device_name=device), LoginResponse,
                f"login {user.user_id}")
        _expect(await client.keys_upload(), KeysUploadResponse, f"keys upload {user.user_id}")
        await _sync(client)
        return client

    async def close(self) -> None:
        for c in self._clients:
            await c.close()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


async def _sync(client: AsyncClient, timeout: int = 0) -> SyncResponse:
    return _expect(await client.sync(timeout=timeout, full_state=False), SyncResponse,
                   f"/sync for {client.user_id}")


async def _sync_until(client: AsyncClient, what: str, done: Any) -> Any:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    while time.monotonic() < deadline:
        resp = await _sync(client, timeout=1000)
        found = done(resp)
        if found:
            return found
    raise AssertionError(f"{client.user_id} never saw {what}")


async def _send(client: AsyncClient, room_id: str, body: str) -> str:
    if client.should_query_keys:
        _expect(await client.keys_query(), KeysQueryResponse, f"keys query {client.user_id}")
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    return _expect(resp, RoomSendResponse, f"encrypted send by {client.user_id}").event_id


async def _receive(client: AsyncClient, room_id: str, event_id: str, what: str) -> Any:
    def found(resp: SyncResponse) -> Any:
        room = resp.rooms.join.get(room_id)
        return next((e for e in (room.timeline.events if room else [])
                     if e.event_id == event_id), None)

    return await _sync_until(client, what, found)


async def _conversation(host: Server, guest: Server) -> None:
    alice_user = MatrixUser.register(host.base_url)
    bob_user = MatrixUser.register(guest.base_url)
    clients = _Clients()
    try:
        alice = await clients.login(host, alice_user, "alice-laptop")
        bob = await clients.login(guest, bob_user, "bob-phone")
        created = await alice.room_create(invite=[bob.user_id], initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}])
        room_id = _expect(created, RoomCreateResponse, "createRoom (encrypted)").room_id
        await _sync_until(bob, "the invite", lambda r: room_id in r.rooms.invite)
        _expect(await bob.join(room_id), JoinResponse, f"join by {bob.user_id}")
        await _sync_until(alice, "bob's join",
                          lambda r: bob.user_id in alice.rooms.get(room_id).users
                          if room_id in alice.rooms else False)
        await _sync(bob)
        assert bob.rooms[room_id].encrypted, "bob's client does not see an encrypted room"

        hello = f"hello {bob.user_id}"
        event_id = await _send(alice, room_id, hello)
        got = await _receive(bob, room_id, event_id, "alice's encrypted message")
        assert isinstance(got, RoomMessageText), f"bob could not decrypt alice's message: {got}"
        assert (got.sender, got.body) == (alice.user_id, hello), got

        await _sync(alice)
        reply = f"hi {alice.user_id}"
        event_id = await _send(bob, room_id, reply)
        got = await _receive(alice, room_id, event_id, "bob's encrypted reply")
        assert isinstance(got, RoomMessageText), f"alice could not decrypt bob's reply: {got}"
        assert (got.sender, got.body) == (bob.user_id, reply), got
    finally:
        await clients.close()


def encrypted_conversation(host: Server, guest: Server) -> None:
    """Blocking: run the nio conversation in a fresh event loop, bounded."""
    asyncio.run(asyncio.wait_for(_conversation(host, guest), SCENARIO_TIMEOUT_S))
