"""The typed fan-out of persisted events: what happens *because* an event was stored
(sync caches, push actions, relations and search indexes, room stats, device lists,
typing and presence) subscribes here by name.

The persister publishes one :class:`PersistedEvent` per stored event after it has
released the room's queue. Records of one room reach every subscriber in stream
order. A subscriber that raises is logged and counted (``failures``) and never
stops the subscribers after it, nor the wake-up of the long-polls that follows.

Turns of a room published while one of its deliveries is under way are delivered
together in the next round (a group commit answers its senders' turns at once). A
*batch* subscriber (:meth:`EventFanout.subscribe_batch`) is called once per round with
its records (stream order), after the per-record subscribers have seen them: for work
that gains from one store call per group commit (push actions).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

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
BatchSubscriber = Callable[[Sequence[PersistedEvent]], "Awaitable[None] | None"]


@dataclass
class _RoomRounds:
    """A room's records waiting for the delivery under way to finish, and their
    publishers (each woken once its records are delivered)."""

    pending: list[PersistedEvent] = field(default_factory=list)
    waiters: list[defer.Deferred[None]] = field(default_factory=list)


class EventFanout:
    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Subscriber]] = []
        self._batch_subscribers: list[tuple[str, BatchSubscriber]] = []
        self.failures: Counter[str] = Counter()
        self._rooms: dict[str, _RoomRounds] = {}
        # Stream positions published and not yet delivered to every subscriber.
        self._undelivered: Counter[int] = Counter()

    def subscribe(self, name: str, subscriber: Subscriber) -> None:
        """``subscriber`` is called with each persisted event, in stream order per room."""
        self._check_name(name)
        self._subscribers.append((name, subscriber))

    def subscribe_batch(self, name: str, subscriber: BatchSubscriber) -> None:
        """``subscriber`` is called once per published turn with its records (stream
        order), after every per-record subscriber has seen them."""
        self._check_name(name)
        self._batch_subscribers.append((name, subscriber))

    def _check_name(self, name: str) -> None:
        if name in self.subscriber_names:
            raise ValueError(f"a subscriber named {name!r} exists already")

    def lowest_undelivered(self) -> int | None:
        """The lowest stream position published and not yet delivered to every
        subscriber (None: none). A subscriber's checkpoint ("every record up to here was
        handled": the federation sender's) must stay below it: a room whose delivery
        stalls holds records that other rooms' later positions overtake."""
        return min(self._undelivered) if self._undelivered else None

    def _delivered(self, records: Sequence[PersistedEvent]) -> None:
        for record in records:
            if record.position > 0:
                left = self._undelivered[record.position] - 1
                if left > 0:
                    self._undelivered[record.position] = left
                else:
                    del self._undelivered[record.position]

    @property
    def subscriber_names(self) -> list[str]:
        return [n for n, _ in self._subscribers] + [n for n, _ in self._batch_subscribers]

    async def publish(self, records: Sequence[PersistedEvent]) -> None:
        """Deliver the records of one room's turn; returns once they are delivered.
        Turns of a room published while an earlier one is being delivered wait, and
        are then delivered together in one round (in publish order), so per-room order
        holds and a group commit's turns reach batch subscribers as one batch."""
        if not records:
            return
        room_id = records[0].event.room_id
        self._undelivered.update(r.position for r in records if r.position > 0)
        done: defer.Deferred[None] = defer.Deferred()
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _RoomRounds()
            room.pending.extend(records)
            room.waiters.append(done)
            defer.ensureDeferred(self._drain(room_id, room)).addErrback(
                lambda f: logger.error("event fan-out of a room failed: %s", f.value))
        else:
            room.pending.extend(records)
            room.waiters.append(done)
        await done

    async def _drain(self, room_id: str, room: _RoomRounds) -> None:
        """Deliver a room's pending records, round after round, until none is left."""
        try:
            while room.pending:
                records, waiters = room.pending, room.waiters
                room.pending, room.waiters = [], []
                try:
                    await self._deliver(records)
                finally:
                    self._delivered(records)
                    for waiter in waiters:
                        waiter.callback(None)
        finally:
            self._rooms.pop(room_id, None)
            self._delivered(room.pending)
            for waiter in room.waiters:  # only after an unexpected error: wake them
                waiter.callback(None)

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
        for name, batch_subscriber in self._batch_subscribers:
            try:
                result = batch_subscriber(records)
                if result is not None:
                    await result
            except Exception:
                self.failures[name] += 1
                logger.exception("event subscriber %s failed on %d events from %s", name,
                                 len(records), records[0].event.event_id)
