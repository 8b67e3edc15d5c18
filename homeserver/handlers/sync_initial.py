"""An initial /sync's joined rooms, built several at a time (issue 18).

Why: each joined room costs a dozen database round trips (timeline, visibility, state,
summary, serialization). One room after another, the reactor mostly waits on them; with
a few rooms in flight their round trips overlap (and the database's own work overlaps
the decoding and serializing of other rooms). The answer is the same: rooms are added in
membership order, and what must not interleave (remembering the lazy-loaded members
sent to the device) is done afterwards, room by room in that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from homeserver.events.model import Event
from storage.stores.events import StateMap
from storage.stores.room_members import MembershipRecord

if TYPE_CHECKING:
    from homeserver.handlers.sync import SyncHandler, SyncRequest, SyncToken

JsonDict = dict[str, Any]
# Joined rooms built at once: enough to keep the database busy, few enough that a
# large account's rooms are not all held half-built in memory together.
INITIAL_SYNC_ROOM_CONCURRENCY = 8


async def initial_joined_rooms(handler: SyncHandler, req: SyncRequest,
                               joins: list[MembershipRecord], token: SyncToken,
                               ignored: frozenset[str], partial: set[str],
                               out: JsonDict) -> None:
    """``joins`` (every one newly joined: there is no ``since``) built up to
    INITIAL_SYNC_ROOM_CONCURRENCY at a time and added to ``out`` in their order."""
    built: list[tuple[JsonDict | None, StateMap, list[Event]] | None] = [None] * len(joins)
    slots = defer.DeferredSemaphore(INITIAL_SYNC_ROOM_CONCURRENCY)

    async def one(i: int) -> None:
        kept: list[tuple[StateMap, list[Event]]] = []
        room = await handler._joined_room(  # noqa: SLF001 (the sync handler's own step)
            req, joins[i], token, True, ignored, partial=joins[i].room_id in partial,
            lazy_sent=kept)
        state, events = kept[0] if kept else ({}, [])
        built[i] = (room, state, events)

    try:
        await defer.gatherResults(
            [slots.run(lambda i=i: defer.ensureDeferred(one(i))) for i in range(len(joins))],
            consumeErrors=True)
    except defer.FirstError as e:  # the room's own error, as one room at a time raised it
        e.subFailure.raiseException()
    for m, result in zip(joins, built, strict=True):
        assert result is not None
        room, state, events = result
        if req.filter.state.lazy_load_members:
            handler._dedupe_lazy_members(req, state, events)  # noqa: SLF001
        if room is not None:
            out[m.room_id] = room
