"""What the state resolution algorithms share: the event fetcher they read through, a
per-resolution event cache, auth-chain walks and Kahn's lexicographic topological sort.

Everything here is pure: the only I/O is the caller's :class:`EventFetcher`, called with
batches of ids (one call per level of an auth-graph walk, never one per event), and each id
is asked for at most once per resolution.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import CREATE
from homeserver.events.room_versions import RoomVersion

StateMap = Mapping[StateKey, str]  # (type, state_key) -> event id
Pause = Callable[[], Awaitable[None]]

CREATE_KEY: StateKey = (CREATE, "")
# How much work (events looked at) between two awaits of the caller's ``pause``: a
# resolution over a large room must not hold the reactor for its whole run.
PAUSE_EVERY = 200


class EventFetcher(Protocol):
    """Where a resolution gets events from (the store, events in flight, a test's dict)."""

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, Event]:
        """The events among ``event_ids`` that are known, rejected ones included (with
        ``internal.rejected_reason`` set); unknown ids are simply left out."""
        ...


class MappingEventFetcher:
    """An :class:`EventFetcher` over events already in memory."""

    def __init__(self, events: Mapping[str, Event] | Iterable[Event]) -> None:
        if isinstance(events, Mapping):
            self._events: dict[str, Event] = dict(events)
        else:
            self._events = {e.event_id: e for e in events}

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, Event]:
        return {eid: self._events[eid] for eid in event_ids if eid in self._events}


def create_event_id_for_room(room_id: str) -> str:
    """Room version 12: the create event's id is the room id with ``$`` for ``!``."""
    return "$" + room_id[1:]


class EventCache:
    """The events of one resolution, fetched in batches and remembered (misses too).

    An event of another room is treated as unknown: it cannot take part in this room's
    state, and ignoring it is safer than failing the whole resolution on bad input.
    """

    def __init__(self, room_id: str, room_version: RoomVersion, fetcher: EventFetcher,
                 known_events: Mapping[str, Event] | None = None, pause: Pause | None = None) -> None:
        self.room_id = room_id
        self.room_version = room_version
        self._fetcher = fetcher
        self._events: dict[str, Event | None] = {}
        self._pause = pause
        self._work = 0
        for event_id, event in (known_events or {}).items():
            self._events[event_id] = event if self._in_room(event) else None

    def _in_room(self, event: Event) -> bool:
        if event.room_id == self.room_id:
            return True
        # A v12 create event has no room_id of its own: its id names the room.
        return (self.room_version.room_id_is_create_hash and event.type == CREATE
                and event.event_id == create_event_id_for_room(self.room_id))

    async def fetch(self, event_ids: Iterable[str]) -> None:
        """Make sure every id in ``event_ids`` has been asked for (one fetcher call)."""
        wanted = [eid for eid in dict.fromkeys(event_ids) if eid not in self._events]
        if not wanted:
            return
        found = await self._fetcher.get_events(wanted)
        for eid in wanted:
            event = found.get(eid)
            usable = event is not None and event.event_id == eid and self._in_room(event)
            self._events[eid] = event if usable else None

    def get(self, event_id: str) -> Event | None:
        """An already fetched event (None if unknown or not fetched yet)."""
        return self._events.get(event_id)

    async def get_event(self, event_id: str) -> Event | None:
        await self.fetch((event_id,))
        return self._events.get(event_id)

    def create_event(self) -> Event | None:
        """The v12 room's create event, implied by the room id (fetched beforehand)."""
        return self.get(create_event_id_for_room(self.room_id))

    async def tick(self, amount: int = 1) -> None:
        """Count work done, and let the caller's reactor breathe every so often."""
        self._work += amount
        if self._pause is not None and self._work >= PAUSE_EVERY:
            self._work = 0
            await self._pause()


async def auth_closure(cache: EventCache, start: Iterable[str],
                       stop: AbstractSet[str] = frozenset()) -> set[str]:
    """``start`` plus every event reachable from it through ``auth_events``, walked
    breadth-first with one fetch per level. Nodes in ``stop`` are neither included nor
    walked through (callers pass a set that is closed under auth events, so everything
    beyond it is in it too). Unknown events are included by id but not walked."""
    seen: set[str] = set()
    frontier: list[str] = []
    for event_id in start:
        if event_id not in stop and event_id not in seen:
            seen.add(event_id)
            frontier.append(event_id)
    while frontier:
        await cache.fetch(frontier)
        following: list[str] = []
        for event_id in frontier:
            event = cache.get(event_id)
            if event is None:
                continue
            for auth_id in event.auth_event_ids:
                if auth_id not in seen and auth_id not in stop:
                    seen.add(auth_id)
                    following.append(auth_id)
        await cache.tick(len(frontier))
        frontier = following
    return seen


def is_power_event(event: Event) -> bool:
    """The spec's *power events* (power levels, join rules, and kicks and bans: a leave
    or ban whose sender is not its target), plus the create event as Synapse and Ruma
    count it: events that can take someone's abilities away."""
    if not event.is_state():
        return False
    if event.state_key == "" and event.type in (CREATE, "m.room.power_levels", "m.room.join_rules"):
        return True
    if event.type == "m.room.member" and event.membership in ("leave", "ban"):
        return event.sender != event.state_key
    return False


def lexicographical_topological_sort(graph: Mapping[str, AbstractSet[str]],
                                     key: Callable[[str], Any]) -> list[str]:
    """Kahn's algorithm, auth events first: ``graph`` maps each node to the nodes it
    cites (edges to nodes outside the graph are ignored); among the nodes whose cited
    nodes are all placed, the one with the smallest ``key`` comes next. O((V+E) log V)."""
    remaining: dict[str, int] = {}
    citers: dict[str, list[str]] = {node: [] for node in graph}
    for node, edges in graph.items():
        inside = [e for e in edges if e in graph and e != node]
        remaining[node] = len(set(inside))
        for edge in set(inside):
            citers[edge].append(node)
    ready = [(key(node), node) for node, count in remaining.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        ordered.append(node)
        for citer in citers[node]:
            remaining[citer] -= 1
            if remaining[citer] == 0:
                heapq.heappush(ready, (key(citer), citer))
    # Only a cycle (impossible for content-hashed ids, not for v1/v2 ids a server made up)
    # leaves nodes behind; they are placed last, by key, so the result stays deterministic.
    if len(ordered) < len(graph):
        placed = set(ordered)
        ordered.extend(sorted((n for n in graph if n not in placed), key=key))
    return ordered
