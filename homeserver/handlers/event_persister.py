"""The one event persister: every event that enters a room goes through :meth:`persist`.

For each event it holds the room's queue (one writer per room at a time), authorises
the event against the state before it, writes it with its state group in one store
transaction, takes its stream position from the events' :class:`StreamPositions`,
and, once the room's queue is released, publishes a typed record of it to the
subscribers of :class:`EventFanout` and wakes the long-polls that may now read it.

Kinds: ``LOCAL`` events are built by this server against the snapshot the caller
read while holding the room's queue (:meth:`room_queue`). Nothing is written unless
every event of a local batch passes authorisation and the caller's validation, so a
refused ``initial_state`` leaves no half-made room.

Events from other servers (:meth:`persist_remote`) take the same queue and store, as a
DAG: the state before a ``REMOTE`` or ``BACKFILLED`` event is the resolution
(homeserver/events/state_res) of the states after its prev events; it is authorised
against its auth events and that state (failing either: stored *rejected*, never
served, never in any state) and, when ``REMOTE``, against the room's current state
(failing: *soft-failed*, stored with its state but not in the timeline, not notified,
not a forward extremity). The room's forward extremities are the events no other
event cites yet; local events cite all of them (up to ``MAX_PREV_EVENTS``), and the
current state is the resolution of their states. ``OUTLIER`` events are checked
against their auth events only and stored without state; backfilled and hidden
events take negative stream orderings, so they sort before all history.

Group commit (issue 18 "single-process lead"): a turn opened with ``pipelined=True``
(a client's /send) that authorises one message event on a snapshot whose state group
is stored does not write it while holding the room's queue. The event goes to the
room's write queue and the turn's snapshot moves past it at once, so the next sender
builds on it while the write is in flight; the queue writes whatever gathered in one
transaction (as Synapse's persistence queue batches per room), and each sender is
answered, and the fan-out told, once its event is committed, in stream order. State
events, remote events and every other turn first wait until the room's queued writes
are committed, so they see the database as the snapshot says. A failed batch fails
every event queued after it (they cite it) and drops the room's cached snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.clock import Clock
from homeserver.events import auth as event_auth
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import get_named_level, get_user_power_level
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.handlers.event_dag import DagWriter
from homeserver.handlers.event_fanout import EventFanout, PersistedEvent, PersistKind
from homeserver.handlers.stream_positions import StreamPositions
from homeserver.http.errors import Codes, MatrixError
from homeserver.lru import LruCache
from homeserver.notifier import NotifierInterface
from storage.stores.events import EventStore, PersistRequest, StateMap
from storage.stores.rooms import RoomStore

__all__ = ["EventPersister", "MissingEventsError", "Outcome", "PersistKind", "PersistedEvent",
           "RoomSnapshot", "RoomQueue", "live_events"]

_REDACT_AUTH = (("m.room.create", ""), ("m.room.power_levels", ""))
_SNAPSHOT_CACHE = 10_000
# Auth events (create, power levels, join rules, members) re-read on every send: they
# never change once stored (erasure keeps what the auth rules read), so they are kept.
_AUTH_EVENT_CACHE = 20_000
# The most events one group-commit transaction writes (the rest wait for the next).
MAX_WRITE_BATCH = 100

logger = logging.getLogger(__name__)

Validator = Callable[[Event, "RoomSnapshot"], Awaitable[None]]


@dataclass(frozen=True)
class RoomSnapshot:
    """The current state of a room as this process last wrote it: the state before
    the next local event (the resolution of the extremities' states), the forward
    extremities (its prev events), the stored state group equal to that state (None
    when it is a resolution not stored yet) and the highest depth among them."""

    state_ids: StateMap
    extremities: list[str]
    state_group: int | None
    depth: int

    def after(self, event: Event, group: int | None) -> RoomSnapshot:
        """The snapshot once ``event`` (built on this snapshot) is persisted: it replaces
        the extremities it cites (all of them unless there were more than a local event
        may cite)."""
        state = self.state_ids
        if event.is_state():
            state = {**state, event.state_pair: event.event_id}
        cited = set(event.prev_event_ids)
        extremities = [e for e in self.extremities if e not in cited] + [event.event_id]
        return RoomSnapshot(state, extremities, group, max(self.depth, event.depth))


EMPTY_SNAPSHOT = RoomSnapshot({}, [], None, 0)


@dataclass(frozen=True)
class Outcome:
    """What became of one event of another server. ``status``: ``accepted`` (in the
    timeline and the state), ``soft_failed``, ``rejected``, ``outlier``, ``backfilled``
    or ``known`` (stored before: left as it was); ``reason`` says why it was rejected
    or soft-failed (never event content)."""

    event_id: str
    status: str
    reason: str | None = None


class MissingEventsError(Exception):
    """An event cites events not held here: ``what`` is ``"prev"`` (and no state
    before was given) or ``"auth"``. Fetching them is the caller's job."""

    def __init__(self, event_id: str, missing: Sequence[str], what: str) -> None:
        super().__init__(f"{event_id}: {len(missing)} {what} event(s) not held")
        self.event_id = event_id
        self.missing = list(missing)
        self.what = what


@dataclass
class RoomQueue:
    """The caller's turn in one room's queue: the snapshot to build on, and the
    records of what was persisted during the turn (published when it ends)."""

    room_id: str
    snapshot: RoomSnapshot
    persisted: list[PersistedEvent] = field(default_factory=list)
    # Group commit: the turn may queue one message event (see the module docstring);
    # ``pipe`` is the room's write queue its snapshot came from, ``queued`` the write.
    pipelined: bool = False
    pipe: _WriteQueue | None = None
    queued: defer.Deferred[None] | None = None


@dataclass
class _QueuedWrite:
    turn: RoomQueue
    event: Event
    before: RoomSnapshot
    after: RoomSnapshot
    txn_key: tuple[str, str, str] | None
    redaction_target: str | None
    done: defer.Deferred[None] = field(default_factory=defer.Deferred)


@dataclass
class _WriteQueue:
    """One room's events authorised but not yet committed, and the snapshot after the
    last of them (what the next turn builds on)."""

    snapshot: RoomSnapshot
    pending: list[_QueuedWrite] = field(default_factory=list)
    flushing: bool = False
    failed: bool = False
    drained: list[defer.Deferred[None]] = field(default_factory=list)


class EventPersister:
    def __init__(self, clock: Clock, events: EventStore, rooms: RoomStore,
                 fanout: EventFanout, notifier: NotifierInterface,
                 positions: StreamPositions | None = None) -> None:
        self._clock = clock
        self._events = events
        self._rooms = rooms
        self._fanout = fanout
        self._notifier = notifier
        # Several events writers (homeserver/replication/multi_writer.py): positions
        # shared with them, and ``owns_room`` says which rooms this process may write.
        self.positions = positions or StreamPositions(events.allocate_stream_ordering,
                                                      events.allocate_stream_orderings)
        self.owns_room: Callable[[str], bool] | None = None
        # Federation with event persisters: events of other servers for a room another
        # process writes are persisted there (homeserver/replication/remote_persist.py).
        self.remote_persist: Callable[[str, Sequence[Event], PersistKind, StateMap | None],
                                      Awaitable[list[Outcome]]] | None = None
        self._locks: dict[str, defer.DeferredLock] = {}
        self._snapshots: LruCache[str, RoomSnapshot] = LruCache(_SNAPSHOT_CACHE)
        self._versions: LruCache[str, RoomVersion] = LruCache(_SNAPSHOT_CACHE)
        self._auth_events: LruCache[str, Event] = LruCache(_AUTH_EVENT_CACHE)
        self._pipes: dict[str, _WriteQueue] = {}
        self._dag = DagWriter(self)
        # Rooms joined with partial state (homeserver/handlers/partial_state.py keeps it):
        # the DAG writer fills the members they lack from each event's auth events.
        self.partial_state_rooms: set[str] = set()

    async def load_position(self) -> None:
        if getattr(self.positions, "is_writer", True):
            self.positions.start_at(await self._events.max_stream_ordering())
        # else a reader of several writers: the database's maximum may lie past another
        # writer's write in flight; replication's catch-up gives the writers' positions.

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
        snap = await self.read_snapshot(room_id)
        if snap is not EMPTY_SNAPSHOT:  # an unknown room (or not yet created): not cached
            self._snapshots.set(room_id, snap)
        return snap

    async def read_snapshot(self, room_id: str) -> RoomSnapshot:
        """The room's snapshot as the database holds it now, bypassing the cache (a room
        another process writes: homeserver/replication/remote_create.py)."""
        state = await self._events.get_current_state_ids(room_id)
        if not state:
            return EMPTY_SNAPSHOT  # unknown room (or not yet created): not cached
        extremities = await self._events.get_forward_extremities(room_id)
        group = None
        depth = 0
        if extremities:
            if len(extremities) == 1:  # else the current state is a resolution, no group
                group = await self._events.get_state_group_for_event(extremities[0])
            prev = await self._events.get_events(extremities)
            depth = max((e.depth for e in prev.values()), default=0)
            extremities.sort(key=lambda e: (-prev[e].depth if e in prev else 0, e))
        return RoomSnapshot(state, extremities, group, depth)

    async def current_state(self, room_id: str,
                            keys: Iterable[StateKey] | None = None) -> dict[StateKey, Event]:
        snap = await self.snapshot(room_id)
        state_ids = snap.state_ids
        # Only the keys asked for are looked at: a member's own key, not the whole state
        # of a room of thousands (issue 18: a join read every key per event).
        wanted = dict(state_ids) if keys is None else {
            k: state_ids[k] for k in dict.fromkeys(keys) if k in state_ids}
        found = await self._events.get_events(wanted.values())
        return {k: found[v] for k, v in wanted.items() if v in found}

    def forget_room(self, room_id: str) -> None:
        """Drop what is cached about a room whose rows were deleted (a room purge,
        homeserver/handlers/room_shutdown.py), so it reads as unknown again."""
        self._snapshots.pop(room_id)
        self._versions.pop(room_id)

    # ---- the room queue and the write

    def _lock(self, room_id: str) -> defer.DeferredLock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = defer.DeferredLock()
        return lock

    @asynccontextmanager
    async def room_queue(self, room_id: str, new_room: bool = False,
                         pipelined: bool = False) -> AsyncIterator[RoomQueue]:
        """One turn in the room's queue. What is persisted during the turn is published
        to the fan-out after the queue is released, so a slow or failing consumer never
        holds up the room's next writer. ``pipelined``: the turn may hand one message
        event to the room's write queue (group commit); it ends once that is committed.
        Any other turn starts once the room's queued writes are committed."""
        if self.owns_room is not None and not self.owns_room(room_id):
            # Two processes never write one room (the queue is per process).
            raise MatrixError(503, "This room's events are written by another process; "
                              "try again", Codes.UNKNOWN)
        lock = self._lock(room_id)
        await lock.acquire()
        turn: RoomQueue | None = None
        try:
            pipe = self._pipes.get(room_id)
            if pipe is not None and not pipelined:
                await self._drain(room_id)
                pipe = None
            if new_room:
                snap = EMPTY_SNAPSHOT
            elif pipe is not None:
                snap = pipe.snapshot
            else:
                snap = await self.snapshot(room_id)
            turn = RoomQueue(room_id, snap, pipelined=pipelined, pipe=pipe)
            yield turn
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(room_id, None)
            try:
                if turn is not None and turn.queued is not None:
                    await turn.queued  # committed (or raises: the batch failed)
            finally:
                # Published even when the turn failed part-way: what was stored is
                # delivered.
                if turn is not None and turn.persisted:
                    await self._publish(turn.persisted)

    async def persist(self, room_id: str, events: Sequence[Event], kind: PersistKind) -> None:
        """Persist events that need no caller-held snapshot: takes the room's queue
        itself (events of other servers: :meth:`persist_remote`)."""
        if kind is not PersistKind.LOCAL:
            await self.persist_remote(room_id, events, kind)
            return
        async with self.room_queue(room_id) as turn:
            await self.persist_in_turn(turn, events, kind)

    async def persist_remote(self, room_id: str, events: Sequence[Event], kind: PersistKind,
                             state_before: StateMap | None = None) -> list[Outcome]:
        """Persist events of other servers (kind REMOTE, OUTLIER or BACKFILLED), in
        graph order whatever their order here; one :class:`Outcome` per event, in the
        given order. ``state_before``: the state before those events whose prev events
        are not held here (as send_join and /state give it); without it such an event
        raises :class:`MissingEventsError` (as does one whose auth events are unknown),
        after the events before it in graph order were stored. Events already stored
        are left as they are (outcome ``"known"``)."""
        if kind is PersistKind.LOCAL:
            raise ValueError("local events are built by event_creation")
        if self.remote_persist is not None and self.owns_room is not None \
                and not self.owns_room(room_id):
            try:
                return await self.remote_persist(room_id, events, kind, state_before)
            finally:
                self._snapshots.pop(room_id)  # the writer moved the room on
        async with self.room_queue(room_id) as turn:
            return await self._dag.persist(turn, events, kind, state_before)

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
            raise ValueError(f"{kind.value} events go through persist_remote")
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
        if (turn.pipelined and len(plans) == 1 and not plans[0][0].is_state()
                and turn.snapshot.state_group is not None and turn.queued is None):
            event, before, after, redaction_target = plans[0]
            self._enqueue(turn, event, before, after, txn_key, redaction_target)
            return
        if turn.pipelined:
            # A direct write after queued ones: they are committed first (it cites them).
            await self._drain(turn.room_id)
            if turn.pipe is not None and turn.pipe.failed:
                raise _pipe_failed()
        for i, (event, before, after, redaction_target) in enumerate(plans):
            key = txn_key if i == len(plans) - 1 else None
            await self._write(turn, event, before, after, key, redaction_target, kind)

    async def _auth_state(self, event: Event, snap: RoomSnapshot,
                          batch: dict[str, Event]) -> dict[StateKey, Event]:
        keys = event_auth.auth_types_for_event(event) | {("m.room.create", "")}
        keys |= set(_REDACT_AUTH) if event.type == "m.room.redaction" else set()
        ids = {k: snap.state_ids[k] for k in keys if k in snap.state_ids}
        found: dict[str, Event] = {}
        missing = []
        for i in ids.values():
            known = batch.get(i) or self._auth_events.get(i)
            if known is not None:
                found[i] = known
            else:
                missing.append(i)
        if missing:
            fetched = await self._events.get_events(missing)
            for i, ev in fetched.items():
                if ev.internal.rejected_reason is None:
                    self._auth_events.set(i, ev)
            found.update(fetched)
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
            # No group when the state before is a resolution not stored yet (after a
            # fork): the store then writes one for it.
            group = await self._events.persist_event(PersistRequest(
                event=event, stream_ordering=position,
                group_before=turn.snapshot.state_group if before.state_ids else None,
                state_before=before.state_ids,
                txn_key=txn_key, now_ms=self._clock.time_msec(),
                redaction_target=redaction_target,
            ))
        turn.snapshot = dataclasses.replace(after, state_group=group)
        self._snapshots.set(turn.room_id, turn.snapshot)
        if event.is_state():
            self._auth_events.set(event.event_id, event)
        delta = {event.state_pair: event.event_id} if event.is_state() else {}
        members = (frozenset(_members(turn.snapshot.state_ids))
                   if event.type == "m.room.member" else frozenset())
        turn.persisted.append(PersistedEvent(event, position, delta, kind, members))

    # ---- group commit

    def _enqueue(self, turn: RoomQueue, event: Event, before: RoomSnapshot,
                 after: RoomSnapshot, txn_key: tuple[str, str, str] | None,
                 redaction_target: str | None) -> None:
        """Queue a message event for the room's next group commit; the turn's snapshot
        (and the room's next turn) moves past it now."""
        if turn.pipe is not None and turn.pipe.failed:
            raise _pipe_failed()  # built on events whose write failed
        # Any queue of the room is the turn's own (queues are made holding the turn).
        pipe = self._pipes.get(turn.room_id)
        if txn_key is not None:
            event.internal.device_id = txn_key[1]
            event.internal.txn_id = txn_key[2]
        # A message event leaves the state (and its group) as it was.
        after = dataclasses.replace(after, state_group=before.state_group)
        if pipe is None:
            pipe = self._pipes[turn.room_id] = _WriteQueue(after)
        write = _QueuedWrite(turn, event, before, after, txn_key, redaction_target)
        pipe.pending.append(write)
        pipe.snapshot = turn.snapshot = after
        turn.pipe = pipe
        turn.queued = write.done
        if not pipe.flushing:
            pipe.flushing = True
            defer.ensureDeferred(self._flush(turn.room_id, pipe))

    async def _drain(self, room_id: str) -> None:
        """Wait until the room's queued writes are committed (or failed)."""
        pipe = self._pipes.get(room_id)
        if pipe is None or not (pipe.flushing or pipe.pending):
            return
        waiter: defer.Deferred[None] = defer.Deferred()
        pipe.drained.append(waiter)
        await waiter

    async def _flush(self, room_id: str, pipe: _WriteQueue) -> None:
        """Write the room's queued events, a batch per transaction, until none is left."""
        try:
            while pipe.pending:
                batch = pipe.pending[:MAX_WRITE_BATCH]
                del pipe.pending[:MAX_WRITE_BATCH]
                try:
                    await self._write_batch(room_id, batch)
                except Exception:  # handed to every sender whose event is lost
                    failed = batch + pipe.pending
                    pipe.pending = []
                    pipe.failed = True
                    self._snapshots.pop(room_id)  # it cites what was never stored
                    logger.exception("group commit of %d events in a room failed",
                                     len(failed))
                    failure = Failure()
                    for write in failed:
                        write.done.errback(failure)
                    return
                for write in batch:
                    write.done.callback(None)
        finally:
            pipe.flushing = False
            if self._pipes.get(room_id) is pipe:
                del self._pipes[room_id]
            waiters, pipe.drained = pipe.drained, []
            for waiter in waiters:
                waiter.callback(None)

    async def _write_batch(self, room_id: str, batch: list[_QueuedWrite]) -> None:
        """One transaction for several message events of one room, in queue order."""
        # All the batch's positions in one round trip, in flight until it commits.
        async with self.positions.write_many(len(batch)) as positions:
            now = self._clock.time_msec()
            requests = []
            for write, position in zip(batch, positions, strict=True):
                write.event.internal.stream_ordering = position
                requests.append(PersistRequest(
                    event=write.event, stream_ordering=position,
                    group_before=write.before.state_group, state_before=write.before.state_ids,
                    txn_key=write.txn_key, now_ms=now,
                    redaction_target=write.redaction_target))
            await self._events.persist_messages(requests)
        self._snapshots.set(room_id, batch[-1].after)
        for write, position in zip(batch, positions, strict=True):
            write.turn.persisted.append(
                PersistedEvent(write.event, position, {}, PersistKind.LOCAL, frozenset()))

    async def _publish(self, records: list[PersistedEvent]) -> None:
        await self._fanout.publish(records)
        for record in records:
            if record.kind is PersistKind.BACKFILLED:
                continue  # history: nobody is woken for it
            users = record.members
            room_id = record.event.room_id
            self.positions.notify_when_readable(
                record.position,
                lambda users=users, room_id=room_id: self._notifier.notify(  # type: ignore[misc]
                    user_ids=users, room_ids={room_id}))


def live_events(handler: Callable[[Event], Awaitable[None] | None]
                ) -> Callable[[PersistedEvent], Awaitable[None] | None]:
    """A fan-out subscriber passing ``handler`` only live events (LOCAL and REMOTE):
    backfilled history is not news (no push, no typing reset, no current-state
    bookkeeping); outliers and hidden events are never published."""
    def subscriber(record: PersistedEvent) -> Awaitable[None] | None:
        if record.kind not in (PersistKind.LOCAL, PersistKind.REMOTE):
            return None
        return handler(record.event)

    return subscriber


def _pipe_failed() -> MatrixError:
    return MatrixError(503, "An earlier event of this room could not be stored; try again",
                       Codes.UNKNOWN)


def _members(state_ids: StateMap) -> list[str]:
    return [sk for (t, sk) in state_ids if t == "m.room.member"]
