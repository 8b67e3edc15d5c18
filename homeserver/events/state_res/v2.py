"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

The spec's algorithm (rooms/v2 "State resolution", rooms/v12 for v2.1):

1. split the state sets into the *unconflicted state map* and the *conflicted state set*;
2. the *full conflicted set* is the conflicted set plus the *auth difference* (plus, in
   v2.1, the *conflicted state subgraph*: events on auth paths between conflicted events);
3. the *power events* in it, with the parts of their auth chains that are in it, are
   sorted in *reverse topological power ordering* and run through the *iterative auth
   checks*, starting from the unconflicted state (v2.1: from an empty state);
4. the other events are sorted by *mainline ordering* against the power levels that came
   out of step 3, and run through the iterative auth checks on top of it;
5. the unconflicted state map is laid over the result.

Where implementations read the prose differently, this follows Synapse (and Ruma), so
that Parley converges with them: the auth chain of a state set includes the set's own
events; the auth chains used to enlarge and order the power events are walked only
through events of the full conflicted set; the create event counts as a power event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from homeserver.events.auth import AuthError, auth_types_for_event, check_auth_rules
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import CREATE, POWER_LEVELS, Level, get_user_power_level, parse_level
from homeserver.events.state_res.common import (
    CREATE_KEY,
    EventCache,
    StateMap,
    auth_closure,
    create_event_id_for_room,
    is_power_event,
    lexicographical_topological_sort,
)

PL_KEY: StateKey = (POWER_LEVELS, "")


async def resolve_v2(cache: EventCache, state_sets: Sequence[StateMap], *,
                     admit_rejected: bool = True) -> dict[StateKey, str]:
    """Resolve ``state_sets`` (two or more) with v2, or v2.1 if the cache's room version
    says so. ``admit_rejected``: see :func:`iterative_auth_checks`."""
    v21 = cache.room_version.state_res == "v2.1"
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return dict(unconflicted)
    conflicted_ids: set[str] = set().union(*conflicted.values())
    full = conflicted_ids | await auth_difference(cache, state_sets, unconflicted, conflicted)
    if v21:
        full |= await conflicted_subgraph(cache, conflicted_ids)
    if cache.room_version.room_id_is_create_hash:
        await cache.fetch((create_event_id_for_room(cache.room_id),))
    await cache.fetch(full)
    full = {eid for eid in full if (event := cache.get(eid)) is not None and event.is_state()}

    power = [eid for eid in full if is_power_event(_known(cache, eid))]
    sorted_power = await reverse_topological_power_order(cache, power, full)
    base: dict[StateKey, str] = {} if v21 else dict(unconflicted)
    resolved = await iterative_auth_checks(cache, sorted_power, base, admit_rejected=admit_rejected)

    placed = set(sorted_power)
    leftover = [eid for eid in full if eid not in placed]
    leftover = await mainline_order(cache, leftover, resolved.get(PL_KEY))
    resolved = await iterative_auth_checks(cache, leftover, resolved, admit_rejected=admit_rejected)
    resolved.update(unconflicted)
    return resolved


def separate(state_sets: Sequence[StateMap]) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The unconflicted state map (keys with the same event in *every* set) and the
    conflicted event ids per key (a key missing from some set is conflicted too)."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    keys: set[StateKey] = set().union(*(s.keys() for s in state_sets))
    for key in keys:
        values = {s.get(key) for s in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = next(iter(values))  # type: ignore[assignment]
        else:
            conflicted[key] = {v for v in values if v is not None}
    return unconflicted, conflicted


async def auth_difference(cache: EventCache, state_sets: Sequence[StateMap], unconflicted: StateMap,
                          conflicted: dict[StateKey, set[str]]) -> set[str]:
    """∪Cᵢ − ∩Cᵢ where Cᵢ is the auth chain of state set i (its events included).

    The auth chain of the unconflicted events is common to every Cᵢ, so it is walked once
    and the per-set walks stop at it: the cost is one pass over the room's auth graph
    plus the parts that really differ, not one full pass per state set."""
    common = await auth_closure(cache, unconflicted.values())
    per_set = [
        await auth_closure(cache, [s[key] for key in conflicted if key in s], stop=common)
        for s in state_sets
    ]
    return set().union(*per_set) - set.intersection(*per_set)


async def conflicted_subgraph(cache: EventCache, conflicted_ids: set[str]) -> set[str]:
    """v2.1: every event on an ``auth_events`` path from one conflicted event to another
    (endpoints included): the events in the conflicted events' auth chains from which a
    conflicted event can be reached. One walk plus one memoised pass: linear."""
    closure = await auth_closure(cache, conflicted_ids)
    reaches: dict[str, bool] = {}
    visiting: set[str] = set()
    for root in sorted(closure):
        if root in reaches:
            continue
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            event = cache.get(node)
            auth_ids = event.auth_event_ids if event is not None else []
            if expanded:
                visiting.discard(node)
                reaches[node] = node in conflicted_ids or any(reaches.get(a, False) for a in auth_ids)
                continue
            if node in reaches or node in visiting:
                continue
            visiting.add(node)
            stack.append((node, True))
            stack.extend((a, False) for a in auth_ids if a not in reaches and a not in visiting)
        await cache.tick()
    return {eid for eid in closure if reaches.get(eid)}


def _known(cache: EventCache, event_id: str) -> Event:
    event = cache.get(event_id)
    assert event is not None, "only fetched events reach this point"
    return event


def _cited(cache: EventCache, event: Event, key: StateKey) -> Event | None:
    """The first (fetched) event among ``event``'s auth events with state key ``key``."""
    for auth_id in event.auth_event_ids:
        auth_event = cache.get(auth_id)
        if auth_event is not None and auth_event.is_state() and auth_event.state_pair == key:
            return auth_event
    return None


def sender_power_level(cache: EventCache, event: Event) -> Level:
    """The sender's power level "when looking at their respective auth events" (the
    events must be fetched): the v12 creators' infinite level, else the power levels
    event it cites, else the creator's 100 (v1-v11) or 0. The create event itself cites
    nothing and so has 0, as in Synapse."""
    if event.type == CREATE and event.state_key == "":
        return 0
    auth_state = {key: e for key in (PL_KEY, CREATE_KEY) if (e := _cited(cache, event, key)) is not None}
    if cache.room_version.room_id_is_create_hash:
        create = cache.create_event()
    else:
        create = auth_state.get(CREATE_KEY)
    if create is not None:
        return get_user_power_level(event.sender, auth_state, create)
    # No create event cited (a broken event): the power levels alone decide.
    power_levels = auth_state.get(PL_KEY)
    if power_levels is None:
        return 0
    content = power_levels.content
    users = content.get("users")
    value = users.get(event.sender) if isinstance(users, dict) else None
    level = parse_level(value) if value is not None else None
    if level is None:
        level = parse_level(content.get("users_default", 0))
    return level if level is not None else 0


async def reverse_topological_power_order(cache: EventCache, power_ids: Iterable[str],
                                          full: set[str]) -> list[str]:
    """The power events and the events of their auth chains that are in the full
    conflicted set (walked through that set), auth events first; ties broken by higher
    sender power level, then earlier ``origin_server_ts``, then smaller event id."""
    graph: dict[str, set[str]] = {}
    stack = list(power_ids)
    await cache.fetch(stack)
    stack = [eid for eid in stack if cache.get(eid) is not None]
    while stack:
        event_id = stack.pop()
        if event_id in graph:
            continue
        edges = {a for a in _known(cache, event_id).auth_event_ids if a in full}
        graph[event_id] = edges
        stack.extend(a for a in edges if a not in graph)
    await cache.fetch(a for eid in graph for a in _known(cache, eid).auth_event_ids)
    levels: dict[str, Level] = {}
    for event_id in graph:
        levels[event_id] = sender_power_level(cache, _known(cache, event_id))
    await cache.tick(len(graph))

    def order(event_id: str) -> tuple[Level, int, str]:
        return (-levels[event_id], _known(cache, event_id).origin_server_ts, event_id)

    return lexicographical_topological_sort(graph, order)


async def iterative_auth_checks(cache: EventCache, event_ids: Sequence[str], base: dict[StateKey, str], *,
                                admit_rejected: bool = True) -> dict[StateKey, str]:
    """Apply ``event_ids`` in order on top of ``base``, keeping each event the auth rules
    allow against the state so far, with the event's own (non-rejected) auth events
    filling the keys the state lacks.

    ``admit_rejected``: the spec re-checks events earlier rejected against the state
    before them like any other (True). Synapse keeps them out (False): an event marked
    rejected is neither admitted nor used to authorise others from the resolved state.
    """
    resolved = dict(base)
    await cache.fetch(event_ids)
    events = [e for eid in event_ids if (e := cache.get(eid)) is not None and e.is_state()]
    wanted: set[str] = set()
    for event in events:
        wanted.update(event.auth_event_ids)
        wanted.update(resolved[key] for key in auth_types_for_event(event) if key in resolved)
    await cache.fetch(wanted)
    create12 = cache.create_event() if cache.room_version.room_id_is_create_hash else None

    for event in events:
        auth_state: dict[StateKey, Event] = {}
        for auth_id in event.auth_event_ids:
            auth_event = cache.get(auth_id)
            if auth_event is None or not auth_event.is_state():
                continue
            if auth_event.internal.rejected_reason is None:  # rejected auth events never vouch
                auth_state[auth_event.state_pair] = auth_event
        for key in auth_types_for_event(event):
            state_id = resolved.get(key)
            state_event = await cache.get_event(state_id) if state_id is not None else None
            if state_event is None:
                continue
            if state_event.internal.rejected_reason is not None and not admit_rejected:
                continue
            auth_state[key] = state_event
        await cache.tick()
        if event.internal.rejected_reason is not None and not admit_rejected:
            continue
        if event.type == CREATE and event.state_key == "":
            create: Event | None = event
            auth_state = {}
        else:
            create = create12 if cache.room_version.room_id_is_create_hash else auth_state.get(CREATE_KEY)
        if create is None:
            continue
        try:
            check_auth_rules(event, auth_state, create)
        except AuthError:
            continue
        resolved[event.state_pair] = event.event_id
    return resolved


async def mainline_order(cache: EventCache, event_ids: Sequence[str],
                         power_levels_id: str | None) -> list[str]:
    """Sort by mainline position against ``power_levels_id`` (greater position, i.e. an
    older power levels event, first; events citing none first of all), then
    ``origin_server_ts``, then event id. Positions of power levels events off the
    mainline are memoised, so each is walked once whatever the number of events."""
    if not event_ids:
        return []
    position: dict[str, float] = {}
    current = power_levels_id
    index = 0
    while current is not None and current not in position:
        event = await cache.get_event(current)
        if event is None:
            break
        position[current] = index
        index += 1
        await cache.fetch(event.auth_event_ids)
        cited = _cited(cache, event, PL_KEY)
        current = cited.event_id if cited is not None else None

    await cache.fetch(event_ids)
    events = [e for eid in event_ids if (e := cache.get(eid)) is not None]
    await cache.fetch(a for event in events for a in event.auth_event_ids)
    start: dict[str, str | None] = {}
    for event in events:
        cited = _cited(cache, event, PL_KEY)
        start[event.event_id] = cited.event_id if cited is not None else None

    # Walk the power levels chains off the mainline back to it, a level at a time.
    parent: dict[str, str | None] = {}
    frontier = {p for p in start.values() if p is not None and p not in position}
    while frontier:
        await cache.fetch(a for p in frontier for a in _known(cache, p).auth_event_ids)
        following: set[str] = set()
        for pl_id in frontier:
            cited = _cited(cache, _known(cache, pl_id), PL_KEY)
            parent[pl_id] = cited.event_id if cited is not None else None
            if cited is not None and cited.event_id not in position and cited.event_id not in parent:
                following.add(cited.event_id)
        await cache.tick(len(frontier))
        frontier = following

    def resolve_position(pl_id: str | None) -> float:
        path: list[str] = []
        seen: set[str] = set()
        while pl_id is not None and pl_id not in position and pl_id not in seen:
            seen.add(pl_id)
            path.append(pl_id)
            pl_id = parent.get(pl_id)
        found = position.get(pl_id, math.inf) if pl_id is not None else math.inf
        for step in path:
            position[step] = found
        return found

    def order(event: Event) -> tuple[int, float, int, str]:
        pos = resolve_position(start[event.event_id])
        # Greater position first; "no mainline event at all" (infinity) before any.
        return (0, 0.0, event.origin_server_ts, event.event_id) if math.isinf(pos) else (
            1, -pos, event.origin_server_ts, event.event_id)

    return [event.event_id for event in sorted(events, key=order)]
