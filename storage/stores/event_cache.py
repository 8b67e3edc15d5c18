"""Decoded events by event id, for the hot read paths (issue 18).

Why: an initial /sync of a large account reads tens of thousands of state events;
looking each up, reading its JSON text and decoding it (opening it, when content is
sealed at rest) was most of the time spent. Events barely change once stored, so the
decoded event is kept and, while nothing changed, not read again at all.

Why it is never stale: stored events change in a few ways only (erasure prunes their
JSON, an outlier is promoted into the timeline, history is purged, a room deleted), and
each of them bumps the one-row ``event_cache_epoch`` table in its own transaction
(:func:`bump_epoch`). Every read through the cache reads the epoch first, in the same
transaction as any rows it reads; the cache empties itself when the epoch moved, and
keeps rows only when they were read at its current epoch. A change on this process or
on any other worker is therefore seen by the next read. Stores an event afresh drops
its entry (``discard``: an event stored again after a purge).
Sealed content is checked when its text is read; a value tampered with in the database
after it was cached is refused at the next read of its text.

Why opt-in (``shared=True`` on the store's reads): the cached PDU dicts are shared
between requests, so only read paths that never mutate an event's PDU use them (/sync
and sliding sync serialize events into new dicts); every other read decodes its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from homeserver.events.model import Event
from storage.database import Txn

JsonDict = dict[str, Any]
# Entries kept by default: an account in 300 rooms of 300 members reads about 90,000
# state events in its initial /sync (with 50,000 kept, each such sync read 40,000 of them
# again: 1.7 s of its 3.5 s). A member event decodes to about 2.8 KiB of Python objects,
# so a full cache holds about 280 MiB; it fills only with what is read.
DEFAULT_EVENT_CACHE_SIZE = 100_000
MAX_EVENT_CACHE_SIZE = 10_000_000


def bump_epoch(txn: Txn) -> None:
    """Call in the transaction of any change to a stored event but its first insert."""
    txn.execute("UPDATE event_cache_epoch SET epoch = epoch + 1 WHERE id = 1")


def read_epoch(txn: Txn) -> int:
    row = txn.query_one("SELECT epoch FROM event_cache_epoch WHERE id = 1")
    return int(row[0]) if row else -1


class EventCache:
    """An LRU map event id -> the event as read (its PDU decoded, its row's other
    columns), valid at ``epoch``. Used from the reactor thread only; the events are
    shared by the readers that ask for them, which never change them."""

    def __init__(self, size: int = DEFAULT_EVENT_CACHE_SIZE) -> None:
        if not 0 <= size <= MAX_EVENT_CACHE_SIZE:
            raise ValueError(f"event cache size must be 0..{MAX_EVENT_CACHE_SIZE}")
        self.size = size
        self.epoch: int | None = None
        self._entries: OrderedDict[str, Event] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def at_epoch(self, epoch: int) -> bool:
        """Note the epoch a read saw; empty the cache if it moved. False: the read is
        older than what the cache already saw, so its rows are not to be kept."""
        if self.epoch is None or epoch > self.epoch:
            if self.epoch is not None:
                self._entries.clear()
            self.epoch = epoch
        return epoch == self.epoch

    def get(self, event_id: str) -> Event | None:
        """The event (shared: do not mutate), if cached."""
        entry = self._entries.get(event_id)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(event_id)
        self.hits += 1
        return entry

    def put(self, epoch: int, event: Event) -> None:
        """Keep what a read at ``epoch`` found (nothing, if the epoch moved since)."""
        if self.size and epoch == self.epoch:
            self._entries[event.event_id] = event
            self._entries.move_to_end(event.event_id)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            self._entries.pop(event_id, None)
