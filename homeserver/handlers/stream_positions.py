"""Positions of a database-backed stream (receipts, presence) as /sync may read them.

Writes take their position from the database before they commit, and two writes can
commit out of order. A reader told "everything up to N" must not miss a write at a
position below N that is still in flight, so the readable position is the highest one
below which nothing is in flight (the same rule as the events stream). For the same
reason a write's wake-up (``notify_when_readable``) is held until the readable position
covers it: woken earlier, a long-poll would find nothing, go back to sleep, and sleep
through the write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from twisted.internet import defer


class StreamPositions:
    def __init__(self, allocate: Callable[[], Awaitable[int]],
                 allocate_many: Callable[[int], Awaitable[Sequence[int]]] | None = None
                 ) -> None:
        self._allocate = allocate
        # Several positions in one round trip (a group commit); else one call each.
        self._allocate_many = allocate_many
        self._in_flight: set[int] = set()
        self._max = 0
        # Allocation is serialised so that every allocated position is registered as in
        # flight before a higher one can be: nothing allocated hides below current().
        self._allocating = defer.DeferredLock()
        self._held: list[tuple[int, Callable[[], None]]] = []

    def start_at(self, position: int) -> None:
        """The highest position already persisted (read once at start-up by the
        writer; readers use :meth:`reset_to` and :meth:`advance_to`)."""
        self._max = max(self._max, position)

    def advance_to(self, position: int) -> bool:
        """A reader of a stream another process writes: the writer published that
        everything up to ``position`` is persisted. Only ever moves forward, and releases
        the wake-ups held for it; True if it moved."""
        if position <= self._max:
            return False
        self._max = position
        self._release_held()
        return True

    def reset_to(self, position: int) -> None:
        """A reader starting: begin at the writer's recorded ``position``, even below the
        database's maximum (a row there may have committed past a write still in flight
        in the writer, so reading up to it could skip that write for good). Only before
        this process writes: a position of its own in flight would be hidden."""
        if self._in_flight:
            raise RuntimeError("reset_to with writes in flight")
        self._max = max(0, position)
        self._release_held()

    def current(self) -> int:
        """The highest position below which every write has finished."""
        if self._in_flight:
            return min(self._in_flight) - 1
        return self._max

    @asynccontextmanager
    async def write(self) -> AsyncIterator[int]:
        """A fresh position, held in flight until the block ends (committed or not:
        a failed write leaves a hole, which readers simply skip)."""
        await self._allocating.acquire()
        try:
            position = await self._allocate()
            self._in_flight.add(position)
        finally:
            self._allocating.release()
        try:
            yield position
        finally:
            self._in_flight.discard(position)
            self._max = max(self._max, position)
            self._release_held()

    @asynccontextmanager
    async def write_many(self, n: int) -> AsyncIterator[list[int]]:
        """``n`` fresh positions, ascending, allocated together and all held in flight
        until the block ends (a batch committed in one transaction: readers see all of
        it or none of it)."""
        if n < 1:
            raise ValueError("write_many needs at least one position")
        await self._allocating.acquire()
        try:
            if self._allocate_many is not None:
                positions = sorted(await self._allocate_many(n))
                if len(positions) != n:
                    raise RuntimeError(f"asked for {n} positions, got {len(positions)}")
            else:
                positions = [await self._allocate() for _ in range(n)]
            self._in_flight.update(positions)
        finally:
            self._allocating.release()
        try:
            yield positions
        finally:
            self._in_flight.difference_update(positions)
            self._max = max(self._max, positions[-1])
            self._release_held()

    def notify_when_readable(self, position: int, wake: Callable[[], None]) -> None:
        """Call ``wake`` once readers can see ``position`` (at once if they can)."""
        self._held.append((position, wake))
        self._release_held()

    def _release_held(self) -> None:
        readable = self.current()
        ready = [w for p, w in self._held if p <= readable]
        if ready:
            self._held = [(p, w) for p, w in self._held if p > readable]
            for wake in ready:
                wake()
