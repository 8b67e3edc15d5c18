"""The one event persister: every event that enters a room goes through :meth:`persist`.

For each event it holds the room's queue (one writer per room at a time), authorises
the event against the state before it, writes it with its state group in one store
transaction, takes its stream position from the events' :class:`StreamPositions`,
and, once the room's queue is released, publishes a typed record of it to the
subscribers of :class:`EventFanout` and wakes the long-polls that may now read it.

Kinds: ``LOCAL`` events are built by this server against the snapshot the caller
read while holding the room's queue (:meth:`room_queue`); remote, outlier and
backfilled events (federation) will take the same path with their own kinds.
Nothing is written unless every event of a batch passes authorisation and the
caller's validation, so a refused ``initial_state`` leaves no half-made room.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.events import auth as event_auth
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import get_named_level, get_user_power_level
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.handlers.event_fanout import EventFanout, PersistedEvent, PersistKind
from homeserver.handlers.stream_positions import StreamPositions
from homeserver.http.errors import Codes, MatrixError
from homeserver.lru import LruCache
from homeserver.notifier import NotifierInterface
from storage.stores.events import EventStore, PersistRequest, StateMap
from storage.stores.rooms import RoomStore

__all__ = ["EventPersister", "PersistKind", "PersistedEvent", "RoomSnapshot", "RoomQueue"]

_REDACT_AUTH = (("m.room.create", ""), ("m.room.power_levels", ""))
_SNAPSHOT_CACHE = 10_000

Validator = Callable[[Event, "RoomSnapshot"], Awaitable[None]]


@dataclass(frozen=True)
class RoomSnapshot:
    """The current state of a room as this process last wrote it: the state before
    the next event, its only prev event (the single forward extremity) and depth."""

    state_ids: StateMap
    extremities: list[str]
    state_group: int | None
    depth: int

    def after(self, event: Event, group: int | None) -> RoomSnapshot:
        """The snapshot once ``event`` is the room's latest event."""
        state = self.state_ids
        if event.is_state():
            state = {**state, event.state_pair: event.event_id}
        return RoomSnapshot(state, [event.event_id], group, event.depth)


EMPTY_SNAPSHOT = RoomSnapshot({}, [], None, 0)


@dataclass
class RoomQueue:
    """The caller's turn in one room's queue: the snapshot to build on, and the
    records of what was persisted during the turn (published when it ends)."""

    room_id: str
    snapshot: RoomSnapshot
    persisted: list[PersistedEvent] = field(default_factory=list)


class EventPersister:
    def __init__(self, clock: Clock, events: EventStore, rooms: RoomStore,
                 fanout: EventFanout, notifier: NotifierInterface) -> None:
        self._clock = clock
        self._events = events
        self._rooms = rooms
        self._fanout = fanout
        self._notifier = notifier
        self.positions = StreamPositions(events.allocate_stream_ordering)
        self._locks: dict[str, defer.DeferredLock] = {}
        self._snapshots: LruCache[str, RoomSnapshot] = LruCache(_SNAPSHOT_CACHE)
        self._versions: LruCache[str, RoomVersion] = LruCache(_SNAPSHOT_CACHE)

    async def load_position(self) -> None:
        self.positions.start_at(await self._events.max_stream_ordering())

    def current_position(self) -> int:
        """The highest stream position below which every event is persisted."""
        return self.positions.current()

    # ---- reading the state the persister keeps

    async def room_version(self, room_id: str) -> RoomVersion:
        """A room's version never changes, so it is read once (rooms in use stay cached)."""
        version = self._versions.get(room_id)
        if version is not None:
            return version
        ident = await self._rooms.get_room_version(room_id)
        version = get_room_version(ident) if ident else None
        if version is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        self._versions.set(room_id, version)
        return version

    async def snapshot(self, room_id: str) -> RoomSnapshot:
        snap = self._snapshots.get(room_id)
        if snap is not None:
            return snap
        state = await self._events.get_current_state_ids(room_id)
        if not state:
            return EMPTY_SNAPSHOT  # unknown room (or not yet created): not cached
        extremities = await self._events.get_forward_extremities(room_id)
        group = None
        depth = 0
        if extremities:
            group = await self._events.get_state_group_for_event(extremities[0])
            prev = await self._events.get_events(extremities)
            depth = max((e.depth for e in prev.values()), default=0)
        snap = RoomSnapshot(state, extremities, group, depth)
        self._snapshots.set(room_id, snap)
        return snap

    async def current_state(self, room_id: str,
                            keys: Iterable[StateKey] | None = None) -> dict[StateKey, Event]:
        snap = await self.snapshot(room_id)
        wanted_keys = None if keys is None else set(keys)
        wanted = {k: v for k, v in snap.state_ids.items()
                  if wanted_keys is None or k in wanted_keys}
        found = await self._events.get_events(wanted.values())
        return {k: found[v] for k, v in wanted.items() if v in found}

    # ---- the room queue and the write

    def _lock(self, room_id: str) -> defer.DeferredLock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = defer.DeferredLock()
        return lock

    @asynccontextmanager
    async def room_queue(self, room_id: str, new_room: bool = False) -> AsyncIterator[RoomQueue]:
        """One turn in the room's queue. What is persisted during the turn is published
        to the fan-out after the queue is released, so a slow or failing consumer never
        holds up the room's next writer."""
        lock = self._lock(room_id)
        await lock.acquire()
        turn: RoomQueue | None = None
        try:
            snap = EMPTY_SNAPSHOT if new_room else await self.snapshot(room_id)
            turn = RoomQueue(room_id, snap)
            yield turn
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(room_id, None)
            # Published even when the turn failed part-way: what was stored is delivered.
            if turn is not None and turn.persisted:
                await self._publish(turn.persisted)

    async def persist(self, room_id: str, events: Sequence[Event], kind: PersistKind) -> None:
        """Persist events that need no caller-held snapshot (they carry their own
        prev events): takes the room's queue itself."""
        async with self.room_queue(room_id) as turn:
            await self.persist_in_turn(turn, events, kind)

    async def persist_in_turn(
        self, turn: RoomQueue, events: Sequence[Event], kind: PersistKind,
        validate: Validator | None = None, txn_key: tuple[str, str, str] | None = None,
        before_write: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Authorise every event against the state before it (and run ``validate``
        on it), then write them in order. ``txn_key`` (user, device, txn) marks the
        last event as the answer to a client transaction; ``before_write`` runs once
        every event has passed, before the first is written."""
        if kind is not PersistKind.LOCAL:
            raise NotImplementedError(f"{kind.value} events are not accepted yet")
        batch = {e.event_id: e for e in events}
        snap = turn.snapshot
        plans: list[tuple[Event, RoomSnapshot, RoomSnapshot, str | None]] = []
        for event in events:
            if event.room_id != turn.room_id:
                raise MatrixError(400, "Event is for another room", Codes.BAD_JSON)
            auth_state = await self._auth_state(event, snap, batch)
            self._authorise(event, auth_state)
            if validate is not None:
                await validate(event, snap)
            after = snap.after(event, None)
            plans.append((event, snap, after,
                          await self._applied_redaction(event, auth_state, batch)))
            snap = after
        if before_write is not None:
            await before_write()
        for i, (event, before, after, redaction_target) in enumerate(plans):
            key = txn_key if i == len(plans) - 1 else None
            await self._write(turn, event, before, after, key, redaction_target, kind)

    async def _auth_state(self, event: Event, snap: RoomSnapshot,
                          batch: dict[str, Event]) -> dict[StateKey, Event]:
        keys = event_auth.auth_types_for_event(event) | {("m.room.create", "")}
        keys |= set(_REDACT_AUTH) if event.type == "m.room.redaction" else set()
        ids = {k: snap.state_ids[k] for k in keys if k in snap.state_ids}
        missing = [i for i in ids.values() if i not in batch]
        found = await self._events.get_events(missing) if missing else {}
        found.update({i: batch[i] for i in ids.values() if i in batch})
        return {k: found[v] for k, v in ids.items() if v in found}

    @staticmethod
    def _authorise(event: Event, auth_state: dict[StateKey, Event]) -> None:
        if event.type == "m.room.create" and not event.prev_event_ids:
            create = event
        else:
            found = auth_state.get(("m.room.create", ""))
            if found is None:
                raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
            create = found
        try:
            event_auth.check_auth_rules(event, auth_state, create)
        except event_auth.AuthError as e:
            if create is event:
                raise MatrixError(400, f"Invalid creation content: {e}", Codes.BAD_JSON) from e
            raise MatrixError(403, str(e), Codes.FORBIDDEN) from e

    async def _applied_redaction(self, event: Event, auth_state: dict[StateKey, Event],
                                 batch: dict[str, Event]) -> str | None:
        """The event a redaction takes effect on, or None. A redaction counts only when
        it is a message (never state) event in the target's own room, sent by the
        target's sender or by someone with the room's ``redact`` power level (for a
        target we do not hold yet, only the latter)."""
        target_id = event.redacts
        if target_id is None or event.is_state():
            return None
        target = batch.get(target_id) or await self._events.get_event(target_id)
        if target is not None and target.room_id != event.room_id:
            return None
        if target is not None and target.sender == event.sender:
            return target_id
        create = auth_state.get(("m.room.create", ""))
        if create is None:
            return None
        level = get_user_power_level(event.sender, auth_state, create)
        return target_id if level >= get_named_level("redact", auth_state) else None

    async def _write(self, turn: RoomQueue, event: Event, before: RoomSnapshot,
                     after: RoomSnapshot, txn_key: tuple[str, str, str] | None, redaction_target: str | None,
                     kind: PersistKind) -> None:
        if txn_key is not None:
            event.internal.device_id = txn_key[1]
            event.internal.txn_id = txn_key[2]
        async with self.positions.write() as position:
            event.internal.stream_ordering = position
            group = await self._events.persist_event(PersistRequest(
                event=event, stream_ordering=position,
                group_before=turn.snapshot.state_group, state_before=before.state_ids,
                txn_key=txn_key, now_ms=self._clock.time_msec(),
                redaction_target=redaction_target,
            ))
        turn.snapshot = dataclasses.replace(after, state_group=group)
        self._snapshots.set(turn.room_id, turn.snapshot)
        delta = {event.state_pair: event.event_id} if event.is_state() else {}
        members = (frozenset(_members(turn.snapshot.state_ids))
                   if event.type == "m.room.member" else frozenset())
        turn.persisted.append(PersistedEvent(event, position, delta, kind, members))

    async def _publish(self, records: list[PersistedEvent]) -> None:
        await self._fanout.publish(records)
        for record in records:
            users = record.members
            room_id = record.event.room_id
            self.positions.notify_when_readable(
                record.position,
                lambda users=users, room_id=room_id: self._notifier.notify(  # type: ignore[misc]
                    user_ids=users, room_ids={room_id}))


def _members(state_ids: StateMap) -> list[str]:
    return [sk for (t, sk) in state_ids if t == "m.room.member"]
