"""The per-poll state of parked long-polls (issue 18): the notifier's slotted waiters on
one shared timer, and parsed sync filters shared between requests."""

from __future__ import annotations

import dataclasses

from twisted.internet import defer, task
from twisted.trial import unittest

from homeserver.clock import Clock
from homeserver.handlers import sync_filter
from homeserver.handlers.sync_filter import SyncFilter
from homeserver.notifier import Notifier, Waiter


class NotifierWaitersTest(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = task.Clock()
        self.n = Notifier(Clock(self.reactor))

    def results(self, d: defer.Deferred[bool]) -> list[object]:
        out: list[object] = []
        d.addBoth(out.append)
        return out

    def test_wake_by_user_and_room(self) -> None:
        a = self.results(self.n.wait("@a:x", ["!r:x"], 30))
        b = self.results(self.n.wait("@b:x", [], 30))
        self.assertEqual(self.n.waiting_count(), 2)
        self.n.notify(room_ids=["!r:x"])
        self.assertEqual(a, [True])
        self.assertEqual(b, [])
        self.n.notify(user_ids=["@b:x", "@nobody:x"])
        self.assertEqual(b, [True])
        self.assertEqual(self.n.waiting_count(), 0)
        self.assertEqual((self.n._by_user, self.n._by_room), ({}, {}))
        self.assertEqual(self.n.woken, 2)

    def test_timeouts_in_deadline_order_on_one_timer(self) -> None:
        late = self.results(self.n.wait("@a:x", ["!r:x"], 30))
        early = self.results(self.n.wait("@a:x", [], 10))  # two waiters for one user
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(9.9)
        self.assertEqual((early, late), ([], []))
        self.reactor.advance(0.1)
        self.assertEqual((early, late), ([False], []))
        self.assertEqual(self.n.waiting_count(), 1)
        self.reactor.advance(20)
        self.assertEqual(late, [False])
        self.assertEqual((self.n._by_user, self.n._by_room), ({}, {}))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_woken_waiter_does_not_time_out_later(self) -> None:
        d = self.results(self.n.wait("@a:x", [], 5))
        self.n.notify(user_ids=["@a:x"])
        again = self.results(self.n.wait("@a:x", [], 10))
        self.reactor.advance(5)
        self.assertEqual((d, again), ([True], []))
        self.reactor.advance(5)
        self.assertEqual(again, [False])

    def test_cancel_unindexes(self) -> None:
        d = self.n.wait("@a:x", ["!r:x"], 30)
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.cancel()
        self.assertEqual(self.n.waiting_count(), 0)
        self.assertEqual((self.n._by_user, self.n._by_room), ({}, {}))
        self.n.notify(user_ids=["@a:x"], room_ids=["!r:x"])
        self.reactor.advance(30)
        self.assertEqual(self.n.woken, 0)

    def test_zero_timeout_fires_on_next_tick(self) -> None:
        d = self.results(self.n.wait("@a:x", [], 0))
        self.assertEqual(d, [])
        self.reactor.advance(0)
        self.assertEqual(d, [False])

    def test_close_wakes_all_and_then_answers_at_once(self) -> None:
        a = self.results(self.n.wait("@a:x", ["!r:x"], 30))
        self.n.close()
        self.assertEqual(a, [True])
        self.assertEqual(self.results(self.n.wait("@a:x", [], 30)), [False])

    def test_park_own_waiter(self) -> None:
        class Poll(Waiter):
            __slots__ = ("got",)

            def __init__(self) -> None:
                super().__init__()
                self.got: list[bool] = []

            def on_fire(self, woken: bool) -> None:
                self.got.append(woken)

        p = Poll()
        self.assertTrue(self.n.park(p, "@a:x", ("!r:x",), 10))
        with self.assertRaises(RuntimeError):
            self.n.park(p, "@a:x", (), 10)  # already parked
        self.n.notify(room_ids=["!r:x"])
        self.assertEqual(p.got, [True])
        self.assertTrue(self.n.park(p, "@a:x", (), 0))  # parks again after firing
        self.assertEqual(p.got, [True])  # never fired from inside park
        self.reactor.advance(0)
        self.assertEqual(p.got, [True, False])
        self.assertEqual((self.n._by_user, self.n._by_room, self.n.waiting_count()), ({}, {}, 0))
        # Woken and parked again with a later deadline: its first entry is stale.
        self.assertTrue(self.n.park(p, "@a:x", (), 5))
        self.n.notify(user_ids=["@a:x"])
        self.assertTrue(self.n.park(p, "@a:x", (), 20))
        self.reactor.advance(10)
        self.assertEqual(p.got, [True, False, True])
        self.reactor.advance(10)
        self.assertEqual(p.got, [True, False, True, False])
        self.n.close()
        self.assertFalse(self.n.park(p, "@a:x", (), 10))
        self.assertEqual(p.got, [True, False, True, False])

    def test_heap_stays_bounded_under_churn(self) -> None:
        for _ in range(1000):
            self.n.wait("@a:x", [], 300)
            self.n.notify(user_ids=["@a:x"])
        self.assertLess(len(self.n._heap), 200)


class SharedFilterTest(unittest.TestCase):
    def test_same_json_same_object(self) -> None:
        self.assertIs(SyncFilter.parse({}), SyncFilter.parse(None))
        a = SyncFilter.parse({"room": {"timeline": {"limit": 5}}})
        b = SyncFilter.parse({"room": {"timeline": {"limit": 5}}})
        self.assertIs(a, b)
        self.assertEqual(a.timeline_limit, 5)
        self.assertIsNot(a, SyncFilter.parse({"room": {"timeline": {"limit": 6}}}))
        # true and 1 are different filters
        self.assertIsNot(SyncFilter.parse({"room": {"include_leave": True}}),
                         SyncFilter.parse({"room": {"include_leave": 1}}))

    def test_frozen(self) -> None:
        f = SyncFilter.parse({})
        with self.assertRaises(dataclasses.FrozenInstanceError):
            f.include_leave = True  # type: ignore[misc]
        with self.assertRaises(dataclasses.FrozenInstanceError):
            f.timeline.limit = 3  # type: ignore[misc]

    def test_cache_bounded(self) -> None:
        for i in range(sync_filter._CACHE_SIZE + 50):
            SyncFilter.parse({"room": {"timeline": {"limit": i}}})
        self.assertLessEqual(len(sync_filter._PARSED), sync_filter._CACHE_SIZE)
        huge = {"room": {"rooms": [f"!{i}:x" for i in range(2000)]}}
        self.assertIsNot(SyncFilter.parse(huge), SyncFilter.parse(huge))
