"""The decoded-event cache's epoch rules (storage/stores/event_cache.py, issue 18)."""

from __future__ import annotations

from twisted.trial import unittest

from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from storage.stores.event_cache import EventCache
from storage.stores.state_reads import StateGroupCache


def ev(event_id: str) -> Event:
    return Event(event_id, {"type": "m.room.message", "sender": "@a:hs"},
                 KNOWN_ROOM_VERSIONS["10"])


class EventCacheTest(unittest.TestCase):
    def test_a_moved_epoch_empties_it(self) -> None:
        cache = EventCache(10)
        self.assertTrue(cache.at_epoch(3))
        cache.put(3, ev("$a"))
        self.assertIsNotNone(cache.get("$a"))
        self.assertTrue(cache.at_epoch(3))
        self.assertIsNotNone(cache.get("$a"))
        self.assertTrue(cache.at_epoch(4))
        self.assertIsNone(cache.get("$a"))

    def test_rows_of_an_older_read_are_not_kept(self) -> None:
        cache = EventCache(10)
        cache.at_epoch(5)
        self.assertFalse(cache.at_epoch(4))  # a read that began before the change
        cache.put(4, ev("$a"))
        self.assertIsNone(cache.get("$a"))
        self.assertEqual(cache.epoch, 5)

    def test_bounded_least_recently_used(self) -> None:
        cache = EventCache(2)
        cache.at_epoch(0)
        for name in ("$a", "$b"):
            cache.put(0, ev(name))
        cache.get("$a")
        cache.put(0, ev("$c"))
        self.assertIsNotNone(cache.get("$a"))
        self.assertIsNone(cache.get("$b"))
        self.assertEqual(len(cache), 2)
        cache.discard(["$a"])
        self.assertIsNone(cache.get("$a"))

    def test_size_zero_keeps_nothing(self) -> None:
        cache = EventCache(0)
        cache.at_epoch(0)
        cache.put(0, ev("$a"))
        self.assertEqual(len(cache), 0)
        with self.assertRaises(ValueError):
            EventCache(-1)


class StateGroupCacheTest(unittest.TestCase):
    def test_copies_in_and_out(self) -> None:
        cache = StateGroupCache(100)
        given = {("m.room.create", ""): "$c"}
        cache.put(1, given)
        given[("m.room.name", "")] = "$n"  # the caller's dict, changed after
        out = cache.states([1, 2])
        self.assertEqual(out, {1: {("m.room.create", ""): "$c"}})
        out[1].clear()  # a reader's copy, changed
        self.assertEqual(cache.states([1])[1], {("m.room.create", ""): "$c"})

    def test_bounded_by_entries(self) -> None:
        cache = StateGroupCache(8)
        for g in range(5):
            cache.put(g, {("m.room.member", f"@u{i}:hs"): f"$e{i}" for i in range(2)})
        self.assertEqual(sorted(cache.states(range(5))), [1, 2, 3, 4])
        cache.put_members(4, {"$e0": ("@u0:hs", "join")})
        cache.put_members(0, {"$e0": ("@u0:hs", "join")})  # not held: not kept
        self.assertEqual(cache.members(4), {"$e0": ("@u0:hs", "join")})
        self.assertIsNone(cache.members(0))
        StateGroupCache(0).put(1, {("a", ""): "$a"})  # 0: nothing held
        self.assertEqual(StateGroupCache(0).states([1]), {})

    def test_visibility_refs_per_user_and_bounded(self) -> None:
        cache = StateGroupCache(8)  # refs: at most 4
        cache.put_refs("@a:hs", {1: ("$vis", "$a"), 2: ("$vis", None)})
        cache.put_refs("@b:hs", {1: ("$vis", None)})
        self.assertEqual(cache.refs([1, 2, 3], "@a:hs"), {1: ("$vis", "$a"), 2: ("$vis", None)})
        self.assertEqual(cache.refs([1, 2], "@b:hs"), {1: ("$vis", None)})
        cache.refs([1], "@a:hs")  # recently used: kept
        cache.put_refs("@c:hs", {5: (None, None), 6: (None, "$c")})
        self.assertEqual(cache.refs([1, 2], "@a:hs"), {1: ("$vis", "$a")})
        self.assertEqual(len(cache.refs(range(10), "@c:hs")), 2)
