"""A parked /sync long-poll holds no coroutine (issue 18): the request's handling chain
ends once the poll is parked on the notifier, only the SyncPoll stays (in flight, for
a graceful shutdown), the request keeps none of its headers or query, and the answer
comes from a fresh coroutine when the notifier fires."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from homeserver.handlers.sync_poll import SyncPoll
from tests.rest.room_helpers import RoomTestCase


class ParkedSyncTest(RoomTestCase):
    def parked(self) -> list[SyncPoll]:
        return [p for p in self.hs.resource._in_flight if isinstance(p, SyncPoll)]  # noqa: SLF001

    async def park(self, token: str, since: str, timeout: int = 30000) -> defer.Deferred[Any]:
        waiting = defer.ensureDeferred(self.sync(token, since, timeout=timeout))
        for _ in range(100):
            if self.hs.notifier.waiting_count():
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.hs.notifier.waiting_count(), 1)
        self.assertFalse(waiting.called)
        return waiting

    async def test_parked_poll_holds_no_coroutine_and_no_headers(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        start = await self.sync(bob)
        waiting = await self.park(bob, start["next_batch"])
        # Only the poll is in flight: the request's own coroutine (its Deferred) ended.
        self.assertEqual(len(self.hs.resource._in_flight), 1)  # noqa: SLF001
        (poll,) = self.parked()
        request = poll.request
        self.assertIsNone(request.requestHeaders.getRawHeaders(b"authorization"))
        self.assertEqual(request.args, {})
        self.assertIsNone(request.content)
        self.assertEqual(poll.rooms, (room,))
        await self.send_ok(alice, room, "wake up")
        result = await waiting
        events = result["rooms"]["join"][room]["timeline"]["events"]
        self.assertEqual(events[-1]["content"]["body"], "wake up")
        self.assertEqual(self.parked(), [])
        self.assertEqual(self.hs.resource.in_flight, 0)

    async def test_irrelevant_wake_parks_again_then_times_out(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice)  # bob is not in it
        start = await self.sync(bob)
        waiting = await self.park(bob, start["next_batch"], timeout=10000)
        (first,) = self.parked()
        self.hs.notifier.notify(user_ids=["@bob:test.local"])  # nothing new for bob
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(waiting.called)
        self.assertEqual(self.parked(), [first])  # the same poll, parked again
        self.assertEqual(self.hs.notifier.waiting_count(), 1)
        await self.send_ok(alice, room, "not for bob")
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(waiting.called)
        self.advance(11)
        result = await waiting
        self.assertEqual(result["rooms"]["join"], {})
        self.assertEqual(self.hs.resource.in_flight, 0)

    async def test_shutdown_answers_parked_poll(self) -> None:
        alice = await self.user("alice")
        start = await self.sync(alice)
        waiting = await self.park(alice, start["next_batch"])
        idle = self.hs.resource.wait_idle()
        self.assertFalse(idle.called)
        self.hs.notifier.close()
        result = await waiting
        self.assertEqual(result["rooms"]["join"], {})
        await idle
        self.assertEqual(self.hs.resource.in_flight, 0)

    async def test_failure_on_resume_is_a_500_not_a_hang(self) -> None:
        alice = await self.user("alice")
        start = await self.sync(alice)
        waiting = defer.ensureDeferred(self.request(
            "GET", f"/_matrix/client/v3/sync?since={start['next_batch']}&timeout=30000",
            token=alice))
        for _ in range(100):
            if self.hs.notifier.waiting_count():
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        (poll,) = self.parked()

        class Broken:
            def now_token(self) -> Any:
                raise RuntimeError("boom")

        poll.handler = Broken()  # type: ignore[assignment]
        self.hs.notifier.notify(user_ids=["@alice:test.local"])
        resp = await waiting
        self.assertMatrixError(resp, 500, "M_UNKNOWN")
        self.assertEqual(self.hs.resource.in_flight, 0)
        self.flushLoggedErrors(RuntimeError)
