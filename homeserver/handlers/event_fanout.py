"""The typed fan-out of persisted events: what happens *because* an event was stored
(sync caches, push actions, relations and search indexes, room stats, device lists,
typing and presence) subscribes here by name.

The persister publishes one :class:`PersistedEvent` per stored event after it has
released the room's queue. Records of one room reach every subscriber in stream
order. A subscriber that raises is logged and counted (``failures``) and never
stops the subscribers after it, nor the wake-up of the long-polls that follows.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from twisted.internet import defer

from homeserver.events.model import Event, StateKey

logger = logging.getLogger(__name__)


class PersistKind(enum.Enum):
    """How an event reached the persister."""

    LOCAL = "local"          # built here for a local user
    REMOTE = "remote"        # a new event from another server (federation)
    OUTLIER = "outlier"      # an event we hold without its place in the room's graph
    BACKFILLED = "backfilled"  # history fetched from another server


@dataclass(frozen=True)
class PersistedEvent:
    """One stored event, as every subscriber sees it."""

    event: Event
    position: int                    # its stream ordering
    state_delta: dict[StateKey, str]  # the state it changed ({} for a message event)
    kind: PersistKind
    members: frozenset[str]          # for a membership event: the room's members after it


Subscriber = Callable[[PersistedEvent], "Awaitable[None] | None"]


class EventFanout:
    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Subscriber]] = []
        self.failures: Counter[str] = Counter()
        self._rooms: dict[str, defer.DeferredLock] = {}

    def subscribe(self, name: str, subscriber: Subscriber) -> None:
        """``subscriber`` is called with each persisted event, in stream order per room."""
        if any(n == name for n, _ in self._subscribers):
            raise ValueError(f"a subscriber named {name!r} exists already")
        self._subscribers.append((name, subscriber))

    @property
    def subscriber_names(self) -> list[str]:
        return [n for n, _ in self._subscribers]

    async def publish(self, records: Sequence[PersistedEvent]) -> None:
        """Deliver the records of one room's turn; a later turn of the same room waits
        until this one has been delivered, so per-room order holds."""
        if not records:
            return
        room_id = records[0].event.room_id
        lock = self._rooms.get(room_id)
        if lock is None:
            lock = self._rooms[room_id] = defer.DeferredLock()
        await lock.acquire()
        try:
            await self._deliver(records)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._rooms.pop(room_id, None)

    async def _deliver(self, records: Sequence[PersistedEvent]) -> None:
        for record in records:
            for name, subscriber in self._subscribers:
                try:
                    result = subscriber(record)
                    if result is not None:
                        await result
                except Exception:  # one error policy: log, count, go on
                    self.failures[name] += 1
                    logger.exception("event subscriber %s failed on %s", name,
                                     record.event.event_id)
