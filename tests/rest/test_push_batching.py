"""Push actions of a group commit (issue 18): the rows of a published turn are written
in one transaction and handed to the pushers once, with the same counts, highlights
and notification list as when each event was written alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from homeserver.handlers.event_fanout import PersistedEvent
from homeserver.handlers.push_actions import PushActionsHandler
from storage.stores.push_actions import PushActionRow
from tests.rest.room_helpers import CS, RoomTestCase, q


class PushBatchingTest(RoomTestCase):
    def _handler(self) -> PushActionsHandler:
        subs = dict(self.hs.fanout._batch_subscribers)  # noqa: SLF001
        handler = subs["push_actions"].__self__  # type: ignore[attr-defined]
        assert isinstance(handler, PushActionsHandler)
        return handler

    def _count_transactions(self) -> Counter[str]:
        seen: Counter[str] = Counter()
        db = self.hs.db
        real_run = db.run

        async def counting_run(desc: str, fn: Any, *args: Any) -> Any:
            seen[desc] += 1
            return await real_run(desc, fn, *args)

        db.run = counting_run  # type: ignore[method-assign]
        self.addCleanup(setattr, db, "run", real_run)
        return seen

    async def _unread(self, token: str, room: str) -> dict[str, int]:
        body = await self.sync(token)
        return body["rooms"]["join"][room]["unread_notifications"]

    async def test_concurrent_sends_one_write_per_batch_same_counts(self) -> None:
        tokens = [await self.user(f"u{i}") for i in range(3)]
        room = await self.create_room(tokens[0], preset="public_chat")
        for token in tokens[1:]:
            self.assertEqual((await self.join(token, room)).code, 200)
        handler = self._handler()
        added: list[list[PushActionRow]] = []
        handler.on_added.append(added.append)
        seen = self._count_transactions()
        n = 30
        # Every third message names u1 (a display-name highlight for u1).
        bodies = [f"hello u1 {i}" if i % 3 == 0 else f"m{i}" for i in range(n)]
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.send(tokens[i % 3], room, bodies[i])) for i in range(n)])
        self.assertTrue(all(a.code == 200 for a in answers), answers)
        # Fewer push-action transactions than events: one per published turn.
        self.assertLess(seen["add_push_actions"], n)
        self.assertEqual(seen["add_push_actions"], len(added))
        rows = [r for batch in added for r in batch]
        self.assertEqual(len({(r.user_id, r.event_id) for r in rows}), len(rows))
        for batch in added:
            orders = [r.stream_ordering for r in batch]
            self.assertEqual(orders, sorted(orders))
        # Counts as if written one by one: each user is notified of the others' messages.
        for k, token in enumerate(tokens):
            others = [i for i in range(n) if i % 3 != k]
            highlights = [i for i in others if k == 1 and i % 3 == 0]
            self.assertEqual(await self._unread(token, room),
                             {"notification_count": len(others),
                              "highlight_count": len(highlights)})
        resp = await self.request("GET", f"{CS}/notifications?limit=100", token=tokens[1])
        self.assertEqual(resp.code, 200, resp)
        listed = [n["event"]["event_id"] for n in resp.json["notifications"]]
        expected = [answers[i].json["event_id"] for i in range(n) if i % 3 != 1]
        self.assertEqual(sorted(listed), sorted(expected))

    async def test_redaction_in_the_same_batch_removes_the_rows(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        kept = await self.send_ok(alice, room, "kept")
        gone = await self.send_ok(alice, room, "gone")
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(room)}/redact/{q(gone)}/r1", {}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        redaction = resp.json["event_id"]
        self.assertEqual(await self._unread(bob, room),
                         {"notification_count": 1, "highlight_count": 0})
        # Replay the three as one batch: the redaction must still win over the rows
        # of the event it redacts, gathered just before it.
        events = await self.hs.stores.events.get_events([kept, gone, redaction])
        await self.hs.db.execute("clear", "DELETE FROM event_push_actions")
        await self._handler().on_events([events[kept], events[gone], events[redaction]])
        self.assertEqual(await self._unread(bob, room),
                         {"notification_count": 1, "highlight_count": 0})

    async def test_failing_batch_subscriber_is_counted_not_fatal(self) -> None:
        seen: list[int] = []
        batches: list[int] = []

        def broken(records: Sequence[PersistedEvent]) -> None:
            raise RuntimeError("subscriber bug")

        self.hs.fanout.subscribe_batch("broken_batch", broken)
        self.hs.fanout.subscribe_batch("batch_recorder", lambda recs: batches.append(len(recs)))
        self.hs.fanout.subscribe("recorder", lambda rec: seen.append(rec.position))
        with self.assertRaises(ValueError):
            self.hs.fanout.subscribe("push_actions", lambda rec: None)
        self.assertIn("push_actions", self.hs.fanout.subscriber_names)
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.send_ok(alice, room, "hi")
        self.assertGreater(self.hs.fanout.failures["broken_batch"], 0)
        self.assertEqual(sum(batches), len(seen))
        self.assertEqual(seen, sorted(seen))
        self.flushLoggedErrors(RuntimeError)
