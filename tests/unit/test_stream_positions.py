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
