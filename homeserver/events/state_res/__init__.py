"""State resolution: the state of a room where its event graph forks and merges.

Pure code: the inputs are state maps (``{(type, state_key): event_id}``) and an
:class:`EventFetcher` for the events (the state events and their auth chains); nothing
here touches the database or the network, so local sends in a federated room, federation
ingest and tests all use the same functions. The room version picks the algorithm
(``RoomVersion.state_res``): v1 for room version 1, v2 for 2-11, v2.1 for 12.

Typical use::

    resolved = await resolve_state(room_id, version, [state_a, state_b], fetcher)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import RoomVersion
from homeserver.events.state_res.common import (
    EventCache,
    EventFetcher,
    MappingEventFetcher,
    Pause,
    StateMap,
    lexicographical_topological_sort,
)
from homeserver.events.state_res.v1 import resolve_v1
from homeserver.events.state_res.v2 import resolve_v2

__all__ = [
    "EventFetcher",
    "MappingEventFetcher",
    "StateMap",
    "lexicographical_topological_sort",
    "resolve_state",
]


async def resolve_state(
    room_id: str,
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    fetcher: EventFetcher,
    *,
    known_events: Mapping[str, Event] | None = None,
    pause: Pause | None = None,
    admit_rejected: bool = True,
) -> dict[StateKey, str]:
    """The resolution of ``state_sets`` in ``room_id``.

    ``known_events`` are events in hand (being persisted, say) that the fetcher may not
    have yet; they are looked at first. ``pause`` is awaited every so often during large
    resolutions so that a caller on the reactor can yield (``deferLater(reactor, 0, ...)``).
    ``admit_rejected``: whether an event already marked rejected may enter the resolved
    state when it passes the iterative auth checks (the spec: yes; Synapse: no).
    Events of other rooms and unknown events are ignored. The order of ``state_sets``
    and repeated sets do not change the result.
    """
    sets = [dict(s) for s in state_sets]
    if not sets:
        return {}
    if len(sets) == 1:
        return sets[0]
    cache = EventCache(room_id, room_version, fetcher, known_events=known_events, pause=pause)
    if room_version.state_res == "v1":
        return await resolve_v1(cache, sets, admit_rejected=admit_rejected)
    if room_version.state_res in ("v2", "v2.1"):
        return await resolve_v2(cache, sets, admit_rejected=admit_rejected)
    raise ValueError(f"unknown state resolution algorithm {room_version.state_res!r}")
