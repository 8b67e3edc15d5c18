"""Rooms joined with partial state, and their resync (faster joins; spec v1.6
``omit_members``, MSC3706; issue 16 "Speed").

A resident server may answer our send_join without most ``m.room.member`` events
(``members_omitted``). The join is then persisted on that partial state at once, so
our user can use the room (send, /messages, /sync) while this handler fetches the
full state at the join event in the background:

1. ``fetch_state(server, room_id, join_event_id)`` (federation/missing_events.py
   ``HistoryFetcher.state_before``: ``/state_ids``, then the events not held with
   ``/event`` or ``/state``, each checked and stored as the normal path does), asked of
   the resident first, then of the other ``servers_in_room``; retried with backoff;
2. in the room's queue (no event is written meanwhile): every state group written since
   the join is recomputed as the full state before the join plus what changed on the
   partial state since (so members who changed since keep their newer event), the room's
   current state gains the missing members (membership rows included), and the mark is
   removed, all in one transaction (storage/stores/partial_state.py);
3. whoever waits (``/members``, ``/joined_members``: Synapse waits for full state
   there too, here at most ``MEMBERS_WAIT`` seconds, then answers what is known) wakes;
   so do the room's long-polling syncs: the swap takes an events-stream position of its
   own (no event has it), recorded with the room (schema 0055), and /sync (which leaves
   a partial-state room out unless the client lazy-loads members, as Synapse) sends the
   room as newly joined, full state, to a client whose token is before it.

While a room is partial, the persister checks events of other servers against the
members their auth events name where the state lacks them (homeserver/handlers/
event_dag.py), and our events also go to ``servers_in_room`` (storage/stores/
federation_queue.py). A restart resumes every resync still listed (:meth:`start`).

With event persisters (homeserver/replication/remote_partial_state.py) each writer has
a handler of its own for the rooms it writes: main runs the join and asks the room's
writer to mark, unmark and resync, and the writer fetches the state through main (which
has the federation client). A process waiting for the full state of a room another
process writes polls the table (:func:`wait_until_full`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.clock import Clock
from homeserver.notifier import NotifierInterface
from storage.stores.events import EventStore, StateMap
from storage.stores.partial_state import PartialStateRoom, PartialStateStore

logger = logging.getLogger(__name__)

_CREATE = ("m.room.create", "")
MEMBERS_WAIT = 30.0  # seconds a /members request waits for the resync
RETRY_FIRST = 5.0  # seconds before the first retry of a failed resync, doubling
RETRY_MAX = 3600.0
MAX_SERVERS = 10  # servers asked per attempt
POLL_S = 0.5  # how often a room another process resyncs is looked at while waited for

FetchState = Callable[[str, str, str], Awaitable[StateMap | None]]


class PartialStateHandler:
    def __init__(self, server_name: str, clock: Clock, store: PartialStateStore,
                 events: EventStore, persister: Any,
                 notifier: NotifierInterface | None = None) -> None:
        self._server_name = server_name
        self._notifier = notifier
        self._clock = clock
        self._store = store
        self._events = events
        self._persister = persister
        # Set by the federation wiring (handlers never import federation/).
        self.fetch_state: FetchState | None = None
        self.is_blocked: Callable[[str], Awaitable[bool]] | None = None
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        self._running: dict[str, defer.Deferred[None]] = {}
        self._timers: dict[str, Any] = {}
        self._delays: dict[str, float] = {}
        self._stopped = False

    @property
    def rooms(self) -> set[str]:
        """The rooms with partial state (the set the persister reads)."""
        return self._persister.partial_state_rooms  # type: ignore[no-any-return]

    def is_partial(self, room_id: str) -> bool:
        return room_id in self.rooms

    # ---- the joining server's steps

    async def mark(self, room_id: str, join_event_id: str, resident: str,
                   servers: Iterable[str]) -> None:
        """Before the join is persisted: from now on the room's events are checked as
        partial-state ones, and the mark survives a crash (the resync then finds the
        join missing and drops it)."""
        await self._store.mark(room_id, join_event_id, resident, servers,
                               self._clock.time_msec())
        self.rooms.add(room_id)

    async def unmark(self, room_id: str) -> None:
        """The join failed: the room is not joined, partial or not."""
        await self._store.clear(room_id)
        self.rooms.discard(room_id)
        self._wake(room_id)

    def resync_soon(self, room: PartialStateRoom) -> None:
        if self._stopped or room.room_id in self._running:
            return
        d = defer.ensureDeferred(self._resync(room))
        self._running[room.room_id] = d

        def done(result: Any) -> None:
            self._running.pop(room.room_id, None)
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                logger.error("partial-state resync of a room failed: %s",
                             result.getErrorMessage())
                self._retry(room)
        d.addBoth(done)

    def _owns(self, room_id: str) -> bool:
        """Whether this process writes the room (always, without event persisters)."""
        owns = getattr(self._persister, "owns_room", None)
        return owns is None or bool(owns(room_id))

    async def listed(self, room_id: str) -> PartialStateRoom | None:
        """The room's partial-state record, if it is marked."""
        return next((r for r in await self._store.rooms() if r.room_id == room_id), None)

    async def start(self) -> None:
        """Resume every resync a restart interrupted (of the rooms this process writes)."""
        rooms = [r for r in await self._store.rooms() if self._owns(r.room_id)]
        self.rooms.update(r.room_id for r in rooms)
        for room in rooms:
            self.resync_soon(room)

    async def stop(self) -> None:
        self._stopped = True
        for timer in list(self._timers.values()):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for d in list(self._running.values()):
            d.cancel()
        for room_id in list(self._waiters):
            self._wake(room_id)

    async def wait_for_full_state(self, room_id: str, timeout: float = MEMBERS_WAIT) -> None:
        """Return once the room's state is full, or after ``timeout`` seconds (the
        caller then answers with what is known)."""
        if self._stopped:
            return
        if not self._owns(room_id):  # its writer resyncs it
            await wait_until_full(self._store, self._clock, room_id, timeout,
                                  lambda: self._stopped)
            return
        if not self.is_partial(room_id):
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.setdefault(room_id, []).append(d)
        timer = self._clock.call_later(timeout, lambda: d.called or d.callback(None))
        try:
            await d
        finally:
            if timer.active():
                timer.cancel()
            waiting = self._waiters.get(room_id)
            if waiting is not None and d in waiting:
                waiting.remove(d)
                if not waiting:
                    self._waiters.pop(room_id, None)

    def _wake(self, room_id: str) -> None:
        for d in self._waiters.pop(room_id, []):
            if not d.called:
                d.callback(None)

    def _retry(self, room: PartialStateRoom) -> None:
        if self._stopped:
            return
        delay = min(self._delays.get(room.room_id, RETRY_FIRST / 2) * 2, RETRY_MAX)
        self._delays[room.room_id] = delay

        def again() -> None:
            self._timers.pop(room.room_id, None)
            self.resync_soon(room)
        self._timers[room.room_id] = self._clock.call_later(delay, again)

    # ---- the resync

    async def _servers(self, room: PartialStateRoom) -> list[str]:
        out: list[str] = []
        for server in [room.resident, *room.servers]:
            if server and server != self._server_name and server not in out and (
                    self.is_blocked is None or not await self.is_blocked(server)):
                out.append(server)
        return out[:MAX_SERVERS]

    async def _resync(self, room: PartialStateRoom) -> None:
        room_id = room.room_id
        groups = await self._events.get_state_groups([room.join_event_id])
        if room.join_event_id not in groups or groups[room.join_event_id][1] is None:
            # The join never landed (a crash or a failure mid-join), or the room was
            # purged since: nothing to resync.
            logger.info("partial-state room without its join: mark dropped")
            await self.unmark(room_id)
            return
        if self.fetch_state is None:
            raise RuntimeError("no federation to fetch the room's state with")
        full: StateMap | None = None
        for server in await self._servers(room):
            full = await self.fetch_state(server, room_id, room.join_event_id)
            if full is not None and _CREATE in full:
                break
            full = None
        if full is None:
            raise RuntimeError("no server gave the state at the join")
        async with self._persister.room_queue(room_id):
            # A position of the events stream: /sync tells by it which clients have not
            # had the room yet; readers see it only once the swap has committed.
            positions = self._persister.positions
            async with positions.write() as position:
                await self._apply(room, full, position)
            # The persister's snapshot (current state, extremity's group) is re-read.
            self._persister.forget_room(room_id)
            self.rooms.discard(room_id)
        self._delays.pop(room_id, None)
        self._wake(room_id)
        notifier = self._notifier
        if notifier is not None:
            # The room's long-polls (its members' syncs wait on it) re-check: the room
            # now goes to those that were not sent it.
            positions.notify_when_readable(
                position, lambda: notifier.notify(room_ids=[room_id]))
        logger.info("partial-state room resynced: %d state entries", len(full))

    async def _apply(self, room: PartialStateRoom, fetched: StateMap, position: int) -> None:
        """(In the room's queue.) Full state for every group written since the join."""
        room_id = room.room_id
        rows = await self._store.state_rows_since(room_id, room.join_event_id)
        join_row = next(r for r in rows if r.event_id == room.join_event_id)
        assert join_row.before is not None
        partial_before = await self._events.get_state_for_group(join_row.before)
        # What the join was checked with stays (an entry the server left out of its
        # answer, e.g. a rejected event's key, is not dropped from our state).
        full_before = dict(fetched)
        for key, event_id in partial_before.items():
            full_before.setdefault(key, event_id)
        new_states: dict[int, StateMap] = {}
        for group in sorted({g for r in rows for g in (r.after, r.before) if g is not None}):
            if group == join_row.before:
                continue
            state = await self._events.get_state_for_group(group)
            new_states[group] = overlay(full_before, partial_before, state)
        current = await self._events.get_current_state_ids(room_id)
        full_current = overlay(full_before, partial_before, current)
        delta = {k: v for k, v in full_current.items() if current.get(k) != v}
        await self._store.apply_full_state(room_id, room.join_event_id, full_before,
                                           join_row.before, new_states, rows, delta,
                                           position)


async def wait_until_full(store: PartialStateStore, clock: Clock, room_id: str,
                          timeout: float = MEMBERS_WAIT,
                          stopped: Callable[[], bool] = lambda: False) -> None:
    """Return once ``room_id`` has no partial-state mark, or after ``timeout`` seconds:
    for a room another process resyncs (its writer), whose wake-up does not reach this
    one. The table lists only rooms whose resync is running, so a look is one small read."""
    deadline = clock.time() + timeout
    while not stopped() and room_id in await store.partial_rooms([room_id]):
        left = deadline - clock.time()
        if left <= 0:
            return
        pause: defer.Deferred[None] = defer.Deferred()
        clock.call_later(min(POLL_S, left), pause.callback, None)
        await pause


def overlay(full_before: StateMap, partial_before: StateMap, partial: StateMap) -> StateMap:
    """A state computed on partial state, made full: the full state before the join,
    with every entry the partial state changed since the join."""
    out = dict(full_before)
    for key, event_id in partial.items():
        if partial_before.get(key) != event_id:
            out[key] = event_id
    return out
