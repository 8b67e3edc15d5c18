"""StreamPositions: the readable position and held wake-ups with out-of-order writes."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.handlers.stream_positions import StreamPositions


class StreamPositionsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.next = 10

        async def allocate() -> int:
            self.next += 1
            return self.next

        self.positions = StreamPositions(allocate)
        self.positions.start_at(10)

    async def _write(self, release: defer.Deferred[None], woken: list[int]) -> None:
        async with self.positions.write() as position:
            await release
        self.positions.notify_when_readable(position, lambda: woken.append(position))

    async def test_later_write_is_held_behind_an_earlier_one(self) -> None:
        woken: list[int] = []
        slow: defer.Deferred[None] = defer.Deferred()
        fast: defer.Deferred[None] = defer.Deferred()
        first = defer.ensureDeferred(self._write(slow, woken))  # position 11
        second = defer.ensureDeferred(self._write(fast, woken))  # position 12
        self.assertEqual(self.positions.current(), 10)
        fast.callback(None)
        await second
        # 12 is written but 11 is not: readers stay at 10 and nobody is woken yet.
        self.assertEqual((self.positions.current(), woken), (10, []))
        slow.callback(None)
        await first
        self.assertEqual(self.positions.current(), 12)
        self.assertEqual(sorted(woken), [11, 12])

    async def test_failed_write_leaves_a_hole_and_releases_the_rest(self) -> None:
        woken: list[int] = []
        failing: defer.Deferred[None] = defer.Deferred()
        fine: defer.Deferred[None] = defer.Deferred()
        first = defer.ensureDeferred(self._write(failing, woken))
        second = defer.ensureDeferred(self._write(fine, woken))
        fine.callback(None)
        await second
        failing.errback(RuntimeError("disk full"))
        with self.assertRaises(RuntimeError):
            await first
        self.assertEqual((self.positions.current(), woken), (12, [12]))


class WriteManyTest(unittest.TestCase):
    """A group commit's positions: allocated in one call, all in flight until the batch
    ends, so no position of the batch is readable before every one of them is."""

    def setUp(self) -> None:
        self.next = 10
        self.calls: list[int] = []

        async def allocate() -> int:
            self.next += 1
            return self.next

        async def allocate_many(n: int) -> list[int]:
            self.calls.append(n)
            out = list(range(self.next + 1, self.next + n + 1))
            self.next += n
            return out

        self.positions = StreamPositions(allocate, allocate_many)
        self.positions.start_at(10)

    async def _batch(self, n: int, release: defer.Deferred[None], woken: list[int]) -> list[int]:
        async with self.positions.write_many(n) as positions:
            await release
        for p in positions:
            self.positions.notify_when_readable(p, lambda p=p: woken.append(p))
        return positions

    async def _single(self, release: defer.Deferred[None], woken: list[int]) -> int:
        async with self.positions.write() as position:
            await release
        self.positions.notify_when_readable(position, lambda: woken.append(position))
        return position

    async def test_batch_held_in_flight_until_it_ends(self) -> None:
        woken: list[int] = []
        slow: defer.Deferred[None] = defer.Deferred()
        fast: defer.Deferred[None] = defer.Deferred()
        batch = defer.ensureDeferred(self._batch(3, slow, woken))  # 11, 12, 13
        single = defer.ensureDeferred(self._single(fast, woken))  # 14
        self.assertEqual(self.calls, [3])
        fast.callback(None)
        self.assertEqual(await single, 14)
        self.assertEqual((self.positions.current(), woken), (10, []))
        slow.callback(None)
        self.assertEqual(await batch, [11, 12, 13])
        self.assertEqual(self.positions.current(), 14)
        self.assertEqual(sorted(woken), [11, 12, 13, 14])

    async def test_failed_batch_leaves_holes_and_releases_later_writes(self) -> None:
        woken: list[int] = []
        failing: defer.Deferred[None] = defer.Deferred()
        fine: defer.Deferred[None] = defer.Deferred()
        batch = defer.ensureDeferred(self._batch(2, failing, woken))
        single = defer.ensureDeferred(self._single(fine, woken))
        fine.callback(None)
        await single
        failing.errback(RuntimeError("disk full"))
        with self.assertRaises(RuntimeError):
            await batch
        self.assertEqual((self.positions.current(), woken), (13, [13]))

    async def test_without_allocate_many_one_call_each(self) -> None:
        async def allocate() -> int:
            self.next += 1
            return self.next

        positions = StreamPositions(allocate)
        positions.start_at(10)
        async with positions.write_many(3) as got:
            self.assertEqual(got, [11, 12, 13])
            self.assertEqual(positions.current(), 10)
        self.assertEqual(positions.current(), 13)
        with self.assertRaises(ValueError):
            async with positions.write_many(0):
                pass


class ReaderPositionsTest(unittest.TestCase):
    """The public reader API: ``advance_to`` (a writer's published position) and
    ``reset_to`` (a starting reader begins at the writer's recorded position)."""

    def setUp(self) -> None:
        async def allocate() -> int:
            raise AssertionError("a reader never allocates")

        self.positions = StreamPositions(allocate)

    def test_advance_to_only_moves_forward(self) -> None:
        self.assertTrue(self.positions.advance_to(5))
        self.assertFalse(self.positions.advance_to(5))
        self.assertFalse(self.positions.advance_to(3))
        self.assertEqual(self.positions.current(), 5)
        self.assertTrue(self.positions.advance_to(9))
        self.assertEqual(self.positions.current(), 9)

    def test_advance_to_releases_held_wake_ups(self) -> None:
        woken: list[int] = []
        self.positions.notify_when_readable(4, lambda: woken.append(4))
        self.positions.notify_when_readable(7, lambda: woken.append(7))
        self.positions.advance_to(5)
        self.assertEqual(woken, [4])
        self.positions.advance_to(7)
        self.assertEqual(woken, [4, 7])

    def test_reset_to_may_go_below_the_loaded_maximum(self) -> None:
        self.positions.start_at(20)  # the database's maximum, maybe past a gap
        self.positions.reset_to(17)  # the writer's recorded "persisted up to"
        self.assertEqual(self.positions.current(), 17)
        self.assertTrue(self.positions.advance_to(18))
        self.positions.reset_to(-3)
        self.assertEqual(self.positions.current(), 0)

    async def test_reset_to_refused_with_a_write_in_flight(self) -> None:
        async def allocate() -> int:
            return 11

        positions = StreamPositions(allocate)
        release: defer.Deferred[None] = defer.Deferred()

        async def write() -> None:
            async with positions.write():
                await release

        d = defer.ensureDeferred(write())
        with self.assertRaises(RuntimeError):
            positions.reset_to(3)
        release.callback(None)
        await d
        self.assertEqual(positions.current(), 11)


class _Source:
    def __init__(self, name: str) -> None:
        self.name = name

        async def allocate() -> int:
            return 0

        self.positions = StreamPositions(allocate)

    def current_position(self) -> int:
        return self.positions.current()


class StreamSetTest(unittest.TestCase):
    """Replication's StreamSet reaches the sources' public ``positions`` only."""

    def setUp(self) -> None:
        from homeserver.handlers.sync import EXTRA_STREAMS, SyncToken
        from homeserver.replication.streams import StreamSet

        async def allocate() -> int:
            return 0

        events = StreamPositions(allocate)
        sources = [_Source(n) for n in ("receipts", "presence", "to_device", "device_lists")]
        self.sources = {s.name: s for s in sources}
        account_data = [0]

        class Sync:
            def __init__(self) -> None:
                self.sources = sources

            def now_token(self) -> SyncToken:
                by_name = {s.name: s.current_position() for s in sources}
                return SyncToken(events.current(), account_data[0],
                                 tuple(by_name.get(n, 0) for n in EXTRA_STREAMS))

            def note_account_data(self, position: int, user_id: str) -> None:
                account_data[0] = max(account_data[0], position)

        class Persister:
            positions = events

        self.events = events
        self.streams = StreamSet(Sync(), Persister())  # type: ignore[arg-type]

    def test_advance_and_reset(self) -> None:
        self.events.start_at(50)
        self.sources["presence"].positions.start_at(9)
        self.assertTrue(self.streams.advance({"events": 60, "presence": 4, "receipts": True,
                                              "to_device": -1, "account_data": 3}))
        snap = self.streams.snapshot()
        self.assertEqual((snap["events"], snap["presence"], snap["receipts"],
                          snap["to_device"], snap["account_data"]), (60, 9, 0, 0, 3))
        # A starting reader: exactly the recorded positions (lower ones too).
        self.streams.reset({"events": 55, "presence": 4, "device_lists": "x"})
        snap = self.streams.snapshot()
        self.assertEqual((snap["events"], snap["presence"], snap["device_lists"]), (55, 4, 0))

    def test_a_source_without_positions_is_refused(self) -> None:
        from homeserver.replication.streams import StreamSet

        class Bad:
            name = "receipts"

        class Sync:
            sources = [Bad()]

        class Persister:
            positions = self.events

        with self.assertRaises(TypeError):
            StreamSet(Sync(), Persister())  # type: ignore[arg-type]
