"""Group commit of sends (issue 18 "single-process lead"): message events sent at once
into one room are written in shared transactions, yet every sender's answer, the room's
graph, the stream order, client transactions and a failed write behave as if each had
been written alone."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer

from storage.stores.events import EventStore
from tests.rest.room_helpers import CS, RoomTestCase, q


class SendBatchingTest(RoomTestCase):
    async def _room(self, senders: int = 3) -> tuple[list[str], str]:
        tokens = [await self.user(f"u{i}") for i in range(senders)]
        room = await self.create_room(tokens[0], preset="public_chat")
        for token in tokens[1:]:
            self.assertEqual((await self.join(token, room)).code, 200)
        return tokens, room

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

    async def _timeline(self, token: str, room: str) -> list[dict[str, Any]]:
        page = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/messages?dir=f&limit=200", token=token)
        self.assertEqual(page.code, 200, page)
        return page.json["chunk"]

    async def test_concurrent_sends_chain_and_batch(self) -> None:
        tokens, room = await self._room()
        seen = self._count_transactions()
        n = 30
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.send(tokens[i % 3], room, f"m{i}")) for i in range(n)])
        self.assertTrue(all(a.code == 200 for a in answers), answers)
        ids = [a.json["event_id"] for a in answers]
        self.assertEqual(len(set(ids)), n)
        # Fewer event-writing transactions than events: they were committed in groups.
        self.assertLess(seen["persist_messages"] + seen["persist_event"], n)
        # A group's stream positions are drawn in one round trip, not one per event.
        self.assertEqual(seen["next_event_streams"], seen["persist_messages"])
        self.assertLess(seen["next_event_streams"] + seen["next_event_stream"], n)
        # One linear graph: each message cites exactly the one before it.
        timeline = [e for e in await self._timeline(tokens[0], room)
                    if e["type"] == "m.room.message"]
        self.assertEqual(sorted(e["event_id"] for e in timeline), sorted(ids))
        pdus = await self.hs.stores.events.get_events(ids)
        by_order = sorted(pdus.values(), key=lambda e: e.internal.stream_ordering)
        for prev, event in zip(by_order, by_order[1:], strict=False):
            self.assertEqual(event.prev_event_ids, [prev.event_id])
            self.assertGreater(event.depth, prev.depth)
        extremities = await self.hs.stores.events.get_forward_extremities(room)
        self.assertEqual(extremities, [by_order[-1].event_id])

    async def test_state_after_queued_messages_and_sync(self) -> None:
        tokens, room = await self._room(2)
        first = await self.sync(tokens[1])
        sends = [defer.ensureDeferred(self.send(tokens[0], room, f"m{i}")) for i in range(5)]
        topic = defer.ensureDeferred(self.put_state(tokens[0], room, "m.room.topic",
                                                    {"topic": "t"}))
        sends += [defer.ensureDeferred(self.send(tokens[1], room, f"n{i}")) for i in range(5)]
        answers = await defer.gatherResults([*sends, topic])
        self.assertTrue(all(a.code == 200 for a in answers), answers)
        topic_id = answers[-1].json["event_id"]
        after = await self.sync(tokens[1], since=first["next_batch"],
                                filter='{"room": {"timeline": {"limit": 50}}}')
        got = [e["event_id"] for e in after["rooms"]["join"][room]["timeline"]["events"]]
        self.assertEqual(len(got), 11)
        self.assertIn(topic_id, got)
        extremities = await self.hs.stores.events.get_forward_extremities(room)
        self.assertEqual(len(extremities), 1)
        state = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.topic",
                                   token=tokens[0])
        self.assertEqual(state.json, {"topic": "t"})

    async def test_txn_retries_while_queued(self) -> None:
        tokens, room = await self._room(1)
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.send(tokens[0], room, "same", txn="tx1"))
            for _ in range(5)] + [
            defer.ensureDeferred(self.send(tokens[0], room, f"o{i}")) for i in range(5)])
        self.assertTrue(all(a.code == 200 for a in answers), answers)
        self.assertEqual(len({a.json["event_id"] for a in answers[:5]}), 1)
        bodies = [e["content"].get("body") for e in await self._timeline(tokens[0], room)]
        self.assertEqual(bodies.count("same"), 1)

    async def test_failed_batch_fails_its_senders_only(self) -> None:
        tokens, room = await self._room(1)
        await self.send_ok(tokens[0], room, "before")
        store = self.hs.stores.events
        real = EventStore.persist_messages
        calls = {"n": 0}

        async def failing(self_: EventStore, reqs: list[Any]) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                await real(self_, [])
                raise RuntimeError("disk on fire")
            return await real(self_, reqs)

        store.persist_messages = failing.__get__(store)  # type: ignore[method-assign]
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.send(tokens[0], room, f"m{i}")) for i in range(4)])
        del store.persist_messages
        codes = [a.code for a in answers]
        self.assertIn(500, codes)  # the batch that failed
        self.assertTrue(all(c in (200, 500, 503) for c in codes), answers)
        # The room carries on: a new send cites what is really stored.
        after = await self.send_ok(tokens[0], room, "after")
        stored_ok = [a.json["event_id"] for a in answers if a.code == 200]
        timeline = await self._timeline(tokens[0], room)
        ids = [e["event_id"] for e in timeline]
        self.assertIn(after, ids)
        for event_id in stored_ok:
            self.assertIn(event_id, ids)
        event = await store.get_event(after)
        assert event is not None
        held = await store.get_events(event.prev_event_ids)
        self.assertEqual(set(held), set(event.prev_event_ids))
        self.assertEqual(await store.get_forward_extremities(room), [after])

    async def test_transactions_per_send(self) -> None:
        tokens, room = await self._room(1)
        await self.send_ok(tokens[0], room, "warm")
        seen = self._count_transactions()
        await self.send_ok(tokens[0], room, "one")
        # The txn id lookup, the stream position and the write itself: nothing re-read
        # (room version, snapshot, auth events are kept in memory).
        self.assertEqual(dict(seen), {"get_event_by_txn": 1, "next_event_streams": 1,
                                      "persist_messages": 1})
