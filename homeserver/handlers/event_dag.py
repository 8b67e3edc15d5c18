"""Writing events of other servers into a room's DAG (issue 16), for the persister.

The persister (homeserver/handlers/event_persister.py) owns the room queue, the
snapshot cache and the stream positions; :class:`DagWriter` runs inside a turn of that
queue and decides, per event, per the server-server spec's "Checks performed on
receipt of a PDU" (steps 4-6; format, hashes and signatures are checked before, in
federation/pdu_checks.py):

* the state before the event: the resolution of the states after its prev events (or
  the caller's ``state_before`` when those are not held);
* rejected: it fails the auth rules against its own auth events or against the state
  before it; stored with the reason, hidden, its state after is the state before;
* soft-failed (REMOTE only): it passes those but not the room's current state;
  stored with its state, hidden, not a forward extremity;
* otherwise REMOTE events join the timeline: they replace the extremities they cite,
  and the room's current state becomes the resolution of the extremities' states.

OUTLIER events are checked against their auth events only and stored without state;
BACKFILLED ones get state but touch neither the current state nor the extremities.
Both, and hidden (rejected, soft-failed) events, take negative stream orderings.

An event held only as an outlier (no state, not rejected) that arrives again as REMOTE
or BACKFILLED is *promoted*: decided as a new event would be, then its stored row
takes its new place (stream position, state groups, membership row, current state),
as Synapse does; it is no "known" duplicate. Its stored JSON stays as first received.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from homeserver.events import auth as event_auth
from homeserver.events.model import Event, StateKey
from homeserver.events.state_res import lexicographical_topological_sort, resolve_state
from homeserver.events.state_res.common import create_event_id_for_room
from homeserver.handlers.event_fanout import PersistedEvent, PersistKind
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import (
    BACKFILLED,
    OUTLIER,
    REJECTED,
    SOFT_FAILED,
    TIMELINE,
    PersistRequest,
    StateMap,
)

if TYPE_CHECKING:
    from homeserver.handlers.event_persister import EventPersister, Outcome, RoomQueue

_CREATE: StateKey = ("m.room.create", "")
# Outliers written per transaction (bounded: a full join's thousands of events do not
# hold the database's write lock in one long transaction).
OUTLIER_BATCH = 500
_STATUS = {TIMELINE: "accepted", SOFT_FAILED: "soft_failed", REJECTED: "rejected",
           OUTLIER: "outlier", BACKFILLED: "backfilled"}


class DagWriter:
    def __init__(self, persister: EventPersister) -> None:
        self._p = persister
        self._events = persister._events

    async def persist(self, turn: RoomQueue, events: Sequence[Event], kind: PersistKind,
                      state_before: StateMap | None) -> list[Outcome]:
        from homeserver.handlers.event_persister import Outcome

        for event in events:
            if event.room_id != turn.room_id:
                raise MatrixError(400, "Event is for another room", Codes.BAD_JSON)
        batch = {e.event_id: e for e in events}
        stored = await self._events.get_events(batch)
        promote = await self._promotable(stored, kind)
        outcomes: dict[str, Outcome] = {eid: Outcome(eid, "known") for eid in stored
                                        if eid not in promote}
        # A promoted event is the stored one (its JSON as first received).
        todo = {eid: promote.get(eid, e) for eid, e in batch.items()
                if eid not in stored or eid in promote}
        graph = {eid: set(e.prev_event_ids) | set(e.auth_event_ids) for eid, e in todo.items()}
        order = lexicographical_topological_sort(graph, key=lambda i: (todo[i].depth, i))
        # History: the oldest (first in graph order) gets the lowest position.
        negative: list[int] = []
        if kind is not PersistKind.REMOTE and order:
            negative = sorted(await self._events.allocate_backfill_positions(len(order)))
        done: dict[str, Event] = {}
        states: dict[str, tuple[int | None, StateMap]] = {}
        # Outliers touch only their own rows and are decided on their auth events (held
        # in ``done`` or already stored): written OUTLIER_BATCH per transaction (a join's
        # state: issue 16 "Speed"), including those decided before an error.
        pending: list[PersistRequest] | None = [] if kind is PersistKind.OUTLIER else None
        try:
            for i, eid in enumerate(order):
                event = todo[eid]
                position = negative[i] if negative else None
                outcomes[eid] = await self._one(turn, event, kind, state_before, done,
                                                states, position, eid in promote, pending)
                done[eid] = event
                if pending is not None and len(pending) >= OUTLIER_BATCH:
                    batch_reqs, pending[:] = list(pending), []
                    await self._events.persist_events(batch_reqs)
        finally:
            if pending:
                await self._events.persist_events(pending)
        return [outcomes[e.event_id] for e in events]

    async def _promotable(self, stored: dict[str, Event], kind: PersistKind
                          ) -> dict[str, Event]:
        """The stored events to promote into the graph: held as outliers only (no
        state groups: not soft-failed nor purged history; not rejected), arriving now
        as REMOTE or BACKFILLED events."""
        if kind not in (PersistKind.REMOTE, PersistKind.BACKFILLED):
            return {}
        outliers = [eid for eid, e in stored.items()
                    if e.internal.outlier and not e.internal.rejected_reason]
        if not outliers:
            return {}
        with_state = await self._events.get_state_groups(outliers)
        out = {}
        for eid in outliers:
            if eid not in with_state:
                event = stored[eid]
                event.internal.outlier = False
                out[eid] = event
        return out

    # ---- one event

    async def _one(self, turn: RoomQueue, event: Event, kind: PersistKind,
                   given_state: StateMap | None, done: dict[str, Event],
                   states: dict[str, tuple[int | None, StateMap]],
                   position: int | None, promote: bool = False,
                   pending: list[PersistRequest] | None = None) -> Outcome:
        from homeserver.handlers.event_persister import Outcome, RoomSnapshot

        is_create = event.type == "m.room.create" and not event.prev_event_ids
        reason = await self._check_auth_events(event, is_create, done)
        before: StateMap = {}
        group_before: int | None = None
        base: tuple[int, StateMap] | None = None
        if kind is not PersistKind.OUTLIER and not is_create:
            before, group_before, base = await self._state_before(
                turn, event, given_state, done, states)
        if reason is None and kind is not PersistKind.OUTLIER and not is_create:
            reason = await self._check_against(event, before, done, "the state before it")
        soft = False
        # (No current state yet: the room is being joined, this event brings its state.)
        if reason is None and kind is PersistKind.REMOTE and not is_create \
                and turn.snapshot.state_ids and before != turn.snapshot.state_ids:
            soft = await self._check_against(event, turn.snapshot.state_ids, done,
                                             "the current state") is not None
        if kind is PersistKind.OUTLIER or (is_create and reason is not None):
            mode = OUTLIER
        elif reason is not None:
            mode = REJECTED
        elif kind is PersistKind.BACKFILLED:
            mode = BACKFILLED
        elif soft:
            mode = SOFT_FAILED
        else:
            mode = TIMELINE
        event.internal.rejected_reason = reason
        event.internal.outlier = mode in (OUTLIER, REJECTED, SOFT_FAILED)

        redaction_target = None
        if mode in (TIMELINE, BACKFILLED):
            auth_state = await self._p._auth_state(event, RoomSnapshot(before, [], None, 0), done)
            redaction_target = await self._p._applied_redaction(event, auth_state, done)
        after = dict(before)
        if event.is_state() and mode in (TIMELINE, BACKFILLED, SOFT_FAILED):
            after[event.state_pair] = event.event_id

        snap = turn.snapshot
        current: StateMap | None = None
        extremities: list[str] = []
        if mode == TIMELINE:
            cited = set(event.prev_event_ids)
            extremities = [event.event_id] + [e for e in snap.extremities if e not in cited]
            current = await self._current_state(turn, event, extremities, after)
        delta = ({k: v for k, v in current.items() if snap.state_ids.get(k) != v}
                 | {k: None for k in snap.state_ids if k not in current}) \
            if current is not None else None

        request = PersistRequest(
            event=event, stream_ordering=0, group_before=group_before, state_before=before,
            now_ms=self._p._clock.time_msec(), redaction_target=redaction_target, mode=mode,
            rejected_reason=reason, base=base, current_delta=delta, promote=promote)
        if mode == TIMELINE:
            async with self._p.positions.write() as pos:
                event.internal.stream_ordering = pos
                group = await self._events.persist_event(_at(request, pos))
        else:
            if position is None:
                position = (await self._events.allocate_backfill_positions(1))[0]
            event.internal.stream_ordering = position
            if pending is not None and mode == OUTLIER:
                pending.append(_at(request, position))  # written by persist() (no group)
                group = None
            else:
                group = await self._events.persist_event(_at(request, position))
        if mode != OUTLIER:
            states[event.event_id] = (group, after if mode != REJECTED else before)

        assert event.internal.stream_ordering is not None
        if mode == TIMELINE and current is not None:
            turn.snapshot = RoomSnapshot(current, extremities,
                                         group if len(extremities) == 1 else None,
                                         max(snap.depth, event.depth))
            self._p._snapshots.set(turn.room_id, turn.snapshot)
            members = (frozenset(sk for (t, sk) in current if t == "m.room.member")
                       if event.type == "m.room.member" else frozenset())
            changed = {k: v for k, v in (delta or {}).items() if v is not None}
            turn.persisted.append(PersistedEvent(
                event, event.internal.stream_ordering, changed, kind, members))
        elif mode == BACKFILLED:
            turn.persisted.append(PersistedEvent(
                event, event.internal.stream_ordering, {}, kind, frozenset()))
        status = "rejected" if reason is not None else _STATUS[mode]
        why = reason if reason is not None else (
            "not allowed by the current state" if mode == SOFT_FAILED else None)
        return Outcome(event.event_id, status, why)

    # ---- auth

    async def _check_auth_events(self, event: Event, is_create: bool,
                                 done: dict[str, Event]) -> str | None:
        """Rejection reason against the event's own auth events (None: allowed)."""
        if is_create:
            try:
                event_auth.check_auth_rules(event, {}, event)
            except event_auth.AuthError as e:
                return f"create event: {e.reason}"
            return None
        auth_ids = event.auth_event_ids
        found = await self._fetch(auth_ids, done)
        missing = [i for i in auth_ids if i not in found]
        if missing:
            from homeserver.handlers.event_persister import MissingEventsError

            raise MissingEventsError(event.event_id, missing, "auth")
        try:
            auth_state = event_auth.auth_state_from_auth_events(event, found)
            create = auth_state.get(_CREATE) or await self._create_of(event, done)
            if create is None:
                return "auth events: the room's create event is unknown"
            event_auth.check_auth_rules(event, auth_state, create)
        except event_auth.AuthError as e:
            return f"auth events: {e.reason}"
        return None

    async def _check_against(self, event: Event, state: StateMap, done: dict[str, Event],
                             what: str) -> str | None:
        from homeserver.handlers.event_persister import RoomSnapshot

        if event.room_id in self._p.partial_state_rooms:
            state = await self._with_auth_members(event, state, done)
        auth_state = await self._p._auth_state(event, RoomSnapshot(dict(state), [], None, 0),
                                               done)
        create = auth_state.get(_CREATE) or await self._create_of(event, done)
        if create is None:
            return f"{what}: the room's create event is unknown"
        try:
            event_auth.check_auth_rules(event, auth_state, create)
        except event_auth.AuthError as e:
            return f"{what}: {e.reason}"
        return None

    async def _with_auth_members(self, event: Event, state: StateMap,
                                 done: dict[str, Event]) -> StateMap:
        """A room joined with partial state lacks most member events until its resync
        (homeserver/handlers/partial_state.py): those the state lacks are taken from
        the event's auth events, as Synapse does meanwhile."""
        auth = await self._fetch(event.auth_event_ids, done)
        extra = {a.state_pair: a.event_id for a in auth.values()
                 if a.type == "m.room.member" and a.state_key is not None
                 and a.state_pair not in state and not a.internal.rejected_reason}
        return {**state, **extra} if extra else state

    async def _create_of(self, event: Event, done: dict[str, Event]) -> Event | None:
        """The room's create event where auth events do not cite it (v12: its id is
        the room id's)."""
        if not event.room_version.room_id_is_create_hash:
            return None
        create_id = create_event_id_for_room(event.room_id)
        return (await self._fetch([create_id], done)).get(create_id)

    async def _fetch(self, ids: Sequence[str], done: dict[str, Event]) -> dict[str, Event]:
        found = {i: done[i] for i in ids if i in done}
        rest = [i for i in ids if i not in found]
        if rest:
            found.update(await self._events.get_events(rest))
        return found

    # ---- state

    async def _state_of(self, event_ids: Sequence[str],
                        states: dict[str, tuple[int | None, StateMap]]
                        ) -> dict[str, tuple[int | None, StateMap]]:
        """(group, state) after each event that has state (outliers and unknown
        events are left out)."""
        out = {e: states[e] for e in event_ids if e in states}
        rest = [e for e in event_ids if e not in out]
        if rest:
            groups = await self._events.get_state_groups(rest)
            by_group: dict[int, StateMap] = {}
            for eid, (group, _before) in groups.items():
                if group not in by_group:
                    by_group[group] = await self._events.get_state_for_group(group)
                out[eid] = (group, by_group[group])
        return out

    async def _state_before(self, turn: RoomQueue, event: Event, given: StateMap | None,
                            done: dict[str, Event],
                            states: dict[str, tuple[int | None, StateMap]]
                            ) -> tuple[StateMap, int | None, tuple[int, StateMap] | None]:
        """(state before, a stored group equal to it or None, a group to delta on)."""
        prevs = event.prev_event_ids
        snap = turn.snapshot
        if prevs and snap.state_ids and set(prevs) == set(snap.extremities):
            # On the room's latest events (the usual case): their resolution is the
            # current state the persister holds, nothing to read.
            return dict(snap.state_ids), snap.state_group, None
        known = await self._state_of(prevs, states)
        missing = [p for p in prevs if p not in known]
        if missing or not prevs:
            if given is None:
                from homeserver.handlers.event_persister import MissingEventsError

                raise MissingEventsError(event.event_id, missing or ["(none cited)"], "prev")
            return dict(given), None, None
        distinct: dict[int | None, StateMap] = {}
        for group, state in known.values():
            distinct.setdefault(group, state)
        if len(distinct) == 1:
            group, state = next(iter(distinct.items()))
            return dict(state), group, None
        resolved = await self._resolve(event, list(distinct.values()), done)
        base = next(((g, st) for g, st in distinct.items() if g is not None), None)
        return resolved, None, base

    async def _resolve(self, event: Event, sets: list[StateMap],
                       done: dict[str, Event]) -> StateMap:
        return dict(await resolve_state(event.room_id, event.room_version, sets, self._events,
                                        known_events=dict(done)))

    async def _current_state(self, turn: RoomQueue, event: Event, extremities: list[str],
                             after: StateMap) -> StateMap:
        """The room's state once ``event`` joined ``extremities``: the resolution of
        the states after each of them."""
        if extremities == [event.event_id]:
            return after
        others = await self._state_of([e for e in extremities if e != event.event_id], {})
        sets = [after, *(st for _g, st in others.values())]
        return await self._resolve(event, sets, {event.event_id: event})


def _at(request: PersistRequest, position: int) -> PersistRequest:
    from dataclasses import replace

    return replace(request, stream_ordering=position)
