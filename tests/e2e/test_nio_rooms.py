"""End to end: two matrix-nio users in a private room against a running ``parley run``.

Scenario (rooms issue): alice and bob register; alice creates a private room inviting
bob; bob sees the invite through /sync and joins; messages go both ways and each side
sees the other's through a *long-polling* /sync (so the notifier must wake it); a
repeated transaction id gives the same event; /messages returns the history in order;
bob leaves, after which his /sync has the room under ``leave`` and alice's later
messages reach him neither through /sync nor through /messages.

Same machinery as ``test_nio_accounts``: nio runs in ``asyncio.run`` on a worker thread,
every request and the whole scenario are bounded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nio import (
    AsyncClient,
    InviteMemberEvent,
    InviteNameEvent,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RegisterResponse,
    RoomCreateResponse,
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)
from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import ServerProcess
from tests.e2e.test_nio_accounts import PASSWORD, NioSession, http_status

#: Long-poll timeout handed to /sync; a wake-up must come well before it.
LONGPOLL_MS = 10_000
#: A woken long-poll must return within this (it is far below LONGPOLL_MS).
WAKE_LIMIT_S = 5.0
SCENARIO_TIMEOUT_S = 90.0

_R = TypeVar("_R")


def texts(events: list[Any]) -> list[tuple[str, str]]:
    """(sender, body) of the m.text messages among parsed nio events, in given order."""
    return [(e.sender, e.body) for e in events if isinstance(e, RoomMessageText)]


class RoomsServerProcess(ServerProcess):
    """``ServerProcess`` that creates the data dir up front. On PostgreSQL nothing else
    creates it, and ``parley run`` dies writing its first signing key there (ENOENT on
    ``data/.signing.key.<hex>.tmp``, homeserver/events/signing.py ``write_private_file``).
    Harmless once the server creates the directory itself."""

    def _patch_config(self) -> None:
        assert self.tmp_dir is not None
        os.makedirs(os.path.join(self.tmp_dir, "data"), mode=0o700, exist_ok=True)
        super()._patch_config()


def has_text(room_id: str) -> Callable[[SyncResponse], bool]:
    """Predicate: this sync carries an m.text message in ``room_id``'s joined timeline."""
    def check(resp: SyncResponse) -> bool:
        room = resp.rooms.join.get(room_id)
        return room is not None and bool(texts(room.timeline.events))
    return check


class NioRoomsTest(unittest.TestCase):
    timeout = 150

    async def setUp(self) -> None:  # type: ignore[override]
        self.server = RoomsServerProcess()
        self.addCleanup(self.server.stop)
        await threads.deferToThread(self.server.start)

    def expect(self, resp: object, cls: type[_R]) -> _R:
        if not isinstance(resp, cls):
            raise self.failureException(
                f"expected {cls.__name__}, got {type(resp).__name__}: {resp} "
                f"(HTTP {http_status(resp)})")
        return resp

    async def sync(self, client: AsyncClient, **kw: Any) -> SyncResponse:
        return self.expect(await client.sync(**kw), SyncResponse)

    async def longpoll_during(self, client: AsyncClient, action: Any,
                              arrived: Callable[[SyncResponse], bool]) -> tuple[SyncResponse, Any]:
        """Start a long-polling /sync for ``client``, run ``action()`` while it is parked,
        and return the first response for which ``arrived`` holds, with the action's result.

        Each response's ``next_batch`` is re-polled at once: unrelated wake-ups (e.g. a
        presence change) are allowed, but the awaited event must come well before the
        long-poll timeout, i.e. the server must wake the parked request.
        """
        await self.sync(client)  # catch up first: only what ``action`` causes is new
        poll = asyncio.ensure_future(client.sync(timeout=LONGPOLL_MS))
        await asyncio.sleep(0.3)  # let the request reach the server and park
        t0 = time.monotonic()
        result = await action()
        while True:
            resp = self.expect(await poll, SyncResponse)
            self.assertLess(time.monotonic() - t0, WAKE_LIMIT_S, "long-poll was not woken")
            if arrived(resp):
                return resp, result
            poll = asyncio.ensure_future(client.sync(timeout=LONGPOLL_MS))

    async def test_private_room_invite_join_talk_history_leave(self) -> None:
        async def scenario(s: NioSession) -> None:
            alice, bob = s.client("alice"), s.client("bob")
            a_id = self.expect(await alice.register("alice", PASSWORD), RegisterResponse).user_id
            b_id = self.expect(await bob.register("bob", PASSWORD), RegisterResponse).user_id
            self.assertEqual((a_id, b_id), ("@alice:localhost", "@bob:localhost"))

            # alice creates a private room inviting bob; bob's parked sync wakes with it.
            async def create() -> str:
                resp = await alice.room_create(visibility=RoomVisibility.private,
                                               name="Tea", invite=[b_id])
                return self.expect(resp, RoomCreateResponse).room_id

            sync, room_id = await self.longpoll_during(bob, create, lambda r: bool(r.rooms.invite))
            self.assertEqual(list(sync.rooms.invite), [room_id])
            self.assertNotIn(room_id, sync.rooms.join)
            invite_state = sync.rooms.invite[room_id].invite_state
            mine = [e for e in invite_state if isinstance(e, InviteMemberEvent)
                    and e.state_key == b_id]
            self.assertEqual([(e.membership, e.sender) for e in mine], [("invite", a_id)])
            self.assertEqual([e.name for e in invite_state if isinstance(e, InviteNameEvent)],
                             ["Tea"])

            self.assertEqual(self.expect(await bob.join(room_id), JoinResponse).room_id, room_id)
            sync = await self.sync(bob)
            self.assertIn(room_id, sync.rooms.join)
            self.assertNotIn(room_id, sync.rooms.invite)
            await self.sync(alice)

            # alice -> bob, seen through bob's long-poll.
            async def alice_says() -> str:
                resp = await alice.room_send(room_id, "m.room.message",
                                             {"msgtype": "m.text", "body": "hello bob"},
                                             tx_id="txn-hello")
                return self.expect(resp, RoomSendResponse).event_id

            sync, hello_id = await self.longpoll_during(bob, alice_says, has_text(room_id))
            timeline = sync.rooms.join[room_id].timeline.events
            self.assertEqual([e.event_id for e in timeline], [hello_id])
            self.assertEqual(texts(timeline), [(a_id, "hello bob")])
            self.assertNotIn("transaction_id", timeline[0].source.get("unsigned", {}))  # alice's

            # Same txn id from the same device: the same event, nothing new for bob.
            again = await alice.room_send(room_id, "m.room.message",
                                          {"msgtype": "m.text", "body": "hello bob"},
                                          tx_id="txn-hello")
            self.assertEqual(self.expect(again, RoomSendResponse).event_id, hello_id)
            self.assertNotIn(room_id, (await self.sync(bob)).rooms.join)

            # bob -> alice, seen through alice's long-poll.
            async def bob_says() -> str:
                resp = await bob.room_send(room_id, "m.room.message",
                                           {"msgtype": "m.text", "body": "hi alice"})
                return self.expect(resp, RoomSendResponse).event_id

            sync, reply_id = await self.longpoll_during(alice, bob_says, has_text(room_id))
            timeline = sync.rooms.join[room_id].timeline.events
            self.assertEqual([e.event_id for e in timeline], [reply_id])
            self.assertEqual(texts(timeline), [(b_id, "hi alice")])

            # bob leaves: alice sees the leave, bob's next sync has the room under `leave`.
            self.expect(await bob.room_leave(room_id), RoomLeaveResponse)
            sync = await self.sync(bob)
            self.assertNotIn(room_id, sync.rooms.join)
            self.assertIn(room_id, sync.rooms.leave)
            left = [e for e in sync.rooms.leave[room_id].timeline.events
                    if isinstance(e, RoomMemberEvent) and e.state_key == b_id]
            self.assertEqual([e.membership for e in left], ["leave"])
            leave_id = left[0].event_id
            sync = await self.sync(alice)
            self.assertEqual([e.event_id for e in sync.rooms.join[room_id].timeline.events],
                             [leave_id])

            # Later messages do not reach bob, through /sync or /messages.
            after = await alice.room_send(room_id, "m.room.message",
                                          {"msgtype": "m.text", "body": "after you left"})
            after_id = self.expect(after, RoomSendResponse).event_id
            sync = await self.sync(bob, timeout=1000)
            self.assertEqual((sync.rooms.join, sync.rooms.leave, sync.rooms.invite), ({}, {}, {}))
            await self.assert_history(s, alice, bob, room_id, ids={
                "hello": hello_id, "reply": reply_id, "leave": leave_id, "after": after_id})

        await self.run_nio(scenario)

    async def test_txn_ids_are_idempotent_per_device(self) -> None:
        """PUT .../send/{txnId}: a retry from the same device returns the first event (even
        with other content); the same txnId from another device is a new event. Only the
        sending device sees ``unsigned.transaction_id``."""

        async def scenario(s: NioSession) -> None:
            phone, laptop = s.client("carol"), s.client("carol")
            c_id = self.expect(await phone.register("carol", PASSWORD), RegisterResponse).user_id
            self.expect(await laptop.login(PASSWORD), LoginResponse)
            room_id = self.expect(await phone.room_create(), RoomCreateResponse).room_id
            await self.sync(phone)

            async def send(client: AsyncClient, body: str) -> str:
                resp = await client.room_send(room_id, "m.room.message",
                                              {"msgtype": "m.text", "body": body}, tx_id="t1")
                return self.expect(resp, RoomSendResponse).event_id

            first = await send(phone, "one")
            self.assertEqual(await send(phone, "one"), first)
            self.assertEqual(await send(phone, "one, edited retry"), first)
            other = await send(laptop, "one")
            self.assertNotEqual(other, first)

            timeline = (await self.sync(phone)).rooms.join[room_id].timeline.events
            self.assertEqual([e.event_id for e in timeline], [first, other])
            self.assertEqual(texts(timeline), [(c_id, "one"), (c_id, "one")])
            self.assertEqual([e.source.get("unsigned", {}).get("transaction_id") for e in timeline],
                             ["t1", None])

        await self.run_nio(scenario)

    async def assert_history(self, s: NioSession, alice: AsyncClient, bob: AsyncClient,
                             room_id: str, ids: dict[str, str]) -> None:
        a_id, b_id = alice.user_id, bob.user_id
        # alice, from an initial sync limited to the newest event, pages back with prev_batch
        # (a new nio client with her token: nio would send her stored next_batch otherwise).
        initial = s.client(a_id)
        initial.access_token, initial.user_id = alice.access_token, a_id
        fresh = await self.sync(initial, sync_filter={"room": {"timeline": {"limit": 1}}})
        timeline = fresh.rooms.join[room_id].timeline
        self.assertEqual([e.event_id for e in timeline.events], [ids["after"]])
        self.assertTrue(timeline.limited, f"fresh sync, timeline limit 1: {timeline}")
        page = self.expect(await alice.room_messages(
            room_id, start=timeline.prev_batch, direction=MessageDirection.back, limit=50),
            RoomMessagesResponse)
        chunk = page.chunk
        self.assertEqual([e.event_id for e in chunk[:3]], [ids["leave"], ids["reply"], ids["hello"]])
        self.assertEqual(texts(chunk), [(b_id, "hi alice"), (a_id, "hello bob")])
        self.assertEqual(chunk[-1].source["type"], "m.room.create")
        self.assertEqual(len({e.event_id for e in chunk}), len(chunk))
        members = [(e.state_key, e.membership) for e in chunk if isinstance(e, RoomMemberEvent)]
        self.assertEqual(members[:3], [(b_id, "leave"), (b_id, "join"), (b_id, "invite")])
        self.assertEqual(members[-1], (a_id, "join"))
        stamps = [e.server_timestamp for e in chunk]
        self.assertEqual(stamps, sorted(stamps, reverse=True))
        if page.end is not None:  # the spec lets a server omit `end` at the start of the room
            rest = self.expect(await alice.room_messages(
                room_id, start=page.end, direction=MessageDirection.back, limit=50),
                RoomMessagesResponse)
            self.assertEqual(rest.chunk, [])

        # bob's view ends at his leave: alice's later message is not visible to him.
        page = self.expect(await bob.room_messages(
            room_id, start=bob.next_batch, direction=MessageDirection.back, limit=50),
            RoomMessagesResponse)
        seen = [e.event_id for e in page.chunk]
        self.assertNotIn(ids["after"], seen)
        self.assertEqual(seen[:3], [ids["leave"], ids["reply"], ids["hello"]])

    async def run_nio(self, scenario: Any) -> None:
        await run_nio_scenario(self, self.server, NioSession, scenario, SCENARIO_TIMEOUT_S)
