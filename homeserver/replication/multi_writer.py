"""A stream with several writers (the events stream with event persisters, issue 18).

Every writer takes positions from one shared PostgreSQL sequence, so positions are
unique but two writers commit out of order: W1 may hold position 10 in flight while W2
has persisted 11. A reader must then not serve past 9 (serving 11 and later reading 10
would skip it: a *gap*). So each writer publishes its own "persisted up to": the highest
position below which none of *its* writes is in flight, and the readable position of
the stream, everywhere, is the minimum over writers.

An idle writer must not hold the others back: with nothing in flight (and no
allocation under way) it may claim any position below its next allocation. Its next
position comes from the sequence after the claim, so it is above every position already
handed out, and in particular above every position another writer has published. An
idle writer therefore raises its claim to the highest position it has seen published
(:meth:`MultiWriterPositions.advance_writer` returns True when that happens, and the
caller republishes it). A writer that died with writes in flight holds readers at its
last claim until it restarts (it then claims the stream's persisted maximum: its lost
writes are holes nobody will ever fill).

Single-writer deployments keep :class:`~homeserver.handlers.stream_positions.StreamPositions`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from homeserver.handlers.stream_positions import StreamPositions

if TYPE_CHECKING:
    from homeserver.config.workers import WorkersConfig


def writer_for_room(room_id: str, writers: Sequence[str]) -> str:
    """The events writer of a room: a stable hash of its id over the configured list
    (``stream_writers.events``, in its order), the same in every process and across
    restarts (Python's ``hash`` is salted per process, so it is not used)."""
    if not writers:
        raise ValueError("no events writer configured")
    digest = hashlib.sha256(room_id.encode("utf-8")).digest()
    return writers[int.from_bytes(digest[:8], "big") % len(writers)]


class MultiWriterPositions(StreamPositions):
    """Positions of one stream as seen by one process.

    ``instance`` is this process's name when it is one of ``writers`` (it then writes
    through :meth:`write` as a single writer would), else None (a reader: it only
    learns the writers' positions)."""

    def __init__(self, allocate: Callable[[], Awaitable[int]], writers: Iterable[str],
                 instance: str | None,
                 allocate_many: Callable[[int], Awaitable[Sequence[int]]] | None = None
                 ) -> None:
        super().__init__(allocate, allocate_many)
        self.writers = tuple(dict.fromkeys(writers))
        if not self.writers:
            raise ValueError("a multi-writer stream needs at least one writer")
        if instance is not None and instance not in self.writers:
            instance = None
        self.instance = instance
        # The last position each other writer published (ours is computed).
        self._known: dict[str, int] = {w: 0 for w in self.writers if w != instance}
        # Called after each of this writer's writes ends (replication publishes the new
        # claim: the other writers' readable positions wait for it).
        self.on_written: Callable[[], None] | None = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[int]:
        if self.instance is None:
            raise ValueError("this process does not write this stream")
        async with super().write() as position:
            yield position
        if self.on_written is not None:
            self.on_written()

    @asynccontextmanager
    async def write_many(self, n: int) -> AsyncIterator[list[int]]:
        if self.instance is None:
            raise ValueError("this process does not write this stream")
        async with super().write_many(n) as positions:
            yield positions
        if self.on_written is not None:
            self.on_written()

    @property
    def is_writer(self) -> bool:
        return self.instance is not None

    def start_at(self, position: int) -> None:
        """A writer: the highest position it has persisted (read at start-up: the
        stream's maximum, as a writer restarting owns no write in flight). A reader:
        every writer is at least there (a floor from the database)."""
        super().start_at(position)
        if self.instance is None:
            for name in self._known:
                self._known[name] = max(self._known[name], position)

    def _idle(self) -> bool:
        return not self._in_flight and not self._allocating.locked

    def own_position(self) -> int:
        """This writer's "persisted up to" (what it publishes)."""
        if self.instance is None:
            raise ValueError("not a writer of this stream")
        if self._in_flight:
            return min(self._in_flight) - 1
        if self._idle():
            # Raise the claim to what others published (see the module docstring).
            self._max = max(self._max, *self._known.values()) if self._known else self._max
        return self._max

    def writer_positions(self) -> dict[str, int]:
        out = dict(self._known)
        if self.instance is not None:
            out[self.instance] = self.own_position()
        return out

    def current(self) -> int:
        """The readable position: no writer has anything in flight at or below it."""
        return min(self.writer_positions().values())

    def advance_writer(self, name: str, position: int) -> bool:
        """Another writer published ``position``. Returns True when this (idle)
        writer's own claim rose because of it and should be republished."""
        if name not in self._known or position <= self._known[name]:
            return False
        before = self.own_position() if self.instance is not None else None
        self._known[name] = position
        raised = before is not None and self.own_position() > before
        self._release_held()
        return raised

    def advance_all(self, positions: dict[str, int]) -> bool:
        """Several writers' positions (a catch-up from the database); True when this
        writer's own claim rose."""
        raised = False
        for name, position in positions.items():
            raised = self.advance_writer(name, position) or raised
        return raised


def writer_for(wc: WorkersConfig, room_id: str) -> str:
    """The process writing ``room_id``'s events (the main process without event writers)."""
    return writer_for_room(room_id, wc.event_writers) if wc.event_writers else wc.main_name


def events_positions(wc: WorkersConfig, allocate: Callable[[], Awaitable[int]],
                     allocate_many: Callable[[int], Awaitable[Sequence[int]]] | None = None
                     ) -> StreamPositions:
    """The events stream's positions in this process: multi-writer when
    ``stream_writers.events`` names writers besides main, else the single writer's."""
    if not wc.event_writers:
        return StreamPositions(allocate, allocate_many)
    return MultiWriterPositions(allocate, wc.event_writers, wc.instance, allocate_many)
