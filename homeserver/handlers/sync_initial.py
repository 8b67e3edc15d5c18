"""An initial /sync's joined rooms, read in bulk (issue 18).

Why: built room by room, each joined room cost a dozen database round trips (timeline,
visibility, two states, the state events, the summary, redactions, relations), and an
account in 300 rooms spent most of its time on round trips. Only the timelines are
still read per room (each is a loop over the filter and the visibility rules), several
rooms at a time; everything else is read once for all the rooms: the states at each
timeline's start and the summaries' states and memberships in one transaction each, the
state events in one, and every room's events serialized in one call (one redaction
lookup, one relations lookup). The answer is the same as room by room: rooms are added
in membership order, and the lazy-loaded members sent to the device are remembered
room by room in that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from homeserver.events.model import Event
from homeserver.handlers.sync_summary import summary_event_ids, summary_of
from storage.stores.room_members import MembershipRecord

if TYPE_CHECKING:
    from homeserver.handlers.sync import SyncHandler, SyncRequest, SyncToken

JsonDict = dict[str, Any]
# Timelines read at once: enough to keep the database busy, few enough that a large
# account's rooms do not all hold the database's thread pool queue together.
INITIAL_SYNC_ROOM_CONCURRENCY = 8


async def initial_joined_rooms(handler: SyncHandler, req: SyncRequest,
                               joins: list[MembershipRecord], token: SyncToken,
                               ignored: frozenset[str], partial: set[str],
                               out: JsonDict) -> None:
    """Every room of ``joins`` (each newly joined: there is no ``since``) added to
    ``out`` in their order, as ``SyncHandler._joined_room`` would build it."""
    store = handler._events  # noqa: SLF001 (the sync handler's own parts)
    room_ids = [m.room_id for m in joins]
    timelines = await _timelines(handler, req, room_ids, token, ignored)
    starts = [(events[0].internal.stream_ordering or 1) - 1 if events else token.events
              for events, _ in timelines]
    states = await store.get_states_at_many(list(zip(room_ids, starts, strict=True)))
    summaries = await store.get_states_and_memberships_at_many(room_ids, token.events)

    lazy = req.filter.state.lazy_load_members
    wanted: list[list[str]] = []
    for i, room_id in enumerate(room_ids):
        state = states[i]
        events = timelines[i][0]
        if lazy:
            keep = handler._timeline_senders(events) | {req.user_id}  # noqa: SLF001
            state = {k: v for k, v in state.items()
                     if k[0] != "m.room.member" or k[1] in keep}
            if room_id in partial:
                state = await handler._members_from_auth(state, events)  # noqa: SLF001
        states[i] = state
        timeline_ids = {e.event_id for e in events}
        wanted.append([eid for (etype, _), eid in state.items()
                       if req.filter.state.allows_type(etype) and eid not in timeline_ids])
    found = await store.get_events(
        [eid for ids in wanted for eid in ids]
        + [eid for state, rows in summaries for eid in summary_event_ids(state, rows)],
        shared=True)

    state_events = [[found[eid] for eid in ids if eid in found] for ids in wanted]
    serialized = await _serialize(handler, req, [events for events, _ in timelines],
                                  state_events)
    for i, m in enumerate(joins):
        events, limited = timelines[i]
        if lazy:
            handler._dedupe_lazy_members(req, states[i], events)  # noqa: SLF001
        timeline_json, state_json = serialized[i]
        out[m.room_id] = {
            "timeline": {"events": timeline_json, "limited": limited,
                         "prev_batch": f"t{starts[i]}"},
            "state": {"events": state_json},
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "unread_notifications": {"notification_count": 0, "highlight_count": 0},
            "summary": summary_of(*summaries[i], found, req.user_id),
        }


async def _timelines(handler: SyncHandler, req: SyncRequest, room_ids: list[str],
                     token: SyncToken, ignored: frozenset[str],
                     ) -> list[tuple[list[Event], bool]]:
    """Each room's timeline, INITIAL_SYNC_ROOM_CONCURRENCY rooms at a time."""
    got: list[tuple[list[Event], bool] | None] = [None] * len(room_ids)
    slots = defer.DeferredSemaphore(INITIAL_SYNC_ROOM_CONCURRENCY)

    async def one(i: int) -> None:
        got[i] = await handler._timeline(  # noqa: SLF001
            req, room_ids[i], 0, token.events, ignored, joined=True)

    try:
        await defer.gatherResults(
            [slots.run(lambda i=i: defer.ensureDeferred(one(i))) for i in range(len(room_ids))],
            consumeErrors=True)
    except defer.FirstError as e:  # the room's own error, as one room at a time raised it
        e.subFailure.raiseException()
    return [g if g is not None else ([], False) for g in got]


async def _serialize(handler: SyncHandler, req: SyncRequest, timelines: list[list[Event]],
                     states: list[list[Event]]) -> list[tuple[list[JsonDict], list[JsonDict]]]:
    """Each room's (timeline, state) in client form. With the batch serializer, every
    room in one call: what an event becomes does not depend on the events beside it."""
    if handler.serializer is None:
        return [await handler._serialize_room(t, s, req)  # noqa: SLF001
                for t, s in zip(timelines, states, strict=True)]
    flat: list[Event] = []
    for t, s in zip(timelines, states, strict=True):
        flat += t
        flat += s
    both = await handler.serializer.serialize(flat, req.user_id, req.device_id,
                                              include_room_id=False, shared=True)
    out = []
    at = 0
    for t, s in zip(timelines, states, strict=True):
        out.append((both[at:at + len(t)], both[at + len(t):at + len(t) + len(s)]))
        at += len(t) + len(s)
    return out

