"""State resolution v1 (room version 1 only).

The spec's rooms/v1 algorithm: a *conflict* is a key two state sets give different events
(a key some sets lack is not one); the resolved state R starts as everything else, then

* the conflicting ``m.room.power_levels`` events, sorted by ascending ``depth`` then
  descending ``sha1(event_id)``: the first goes into R, each next one too while it passes
  the auth rules against R; the first that fails ends the chain;
* the same for ``m.room.join_rules``, then for each ``m.room.member`` key;
* for every other key, the event with the highest depth (then lowest sha1) that passes
  against R (the one with the lowest depth if none passes, as Synapse does).

R for the auth checks holds the unconflicted events the conflicting ones need, as in
Synapse. Known to reset state; room version 2 replaced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from homeserver.events.auth import AuthError, auth_types_for_event, check_auth_rules
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import CREATE, MEMBER, POWER_LEVELS
from homeserver.events.state_res.common import CREATE_KEY, EventCache, StateMap

JOIN_RULES = "m.room.join_rules"


def separate_v1(state_sets: Sequence[StateMap]) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Keys every set that has them agrees on, and the conflicting event ids per key."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for state_set in state_sets:
        for key, event_id in state_set.items():
            if key in conflicted:
                conflicted[key].add(event_id)
            elif key not in unconflicted:
                unconflicted[key] = event_id
            elif unconflicted[key] != event_id:
                conflicted[key] = {unconflicted.pop(key), event_id}
    return unconflicted, conflicted


async def resolve_v1(cache: EventCache, state_sets: Sequence[StateMap], *,
                     admit_rejected: bool = True) -> dict[StateKey, str]:
    """Resolve ``state_sets`` with the v1 algorithm. With ``admit_rejected`` False, an
    event marked rejected is treated as unknown, as Synapse does."""
    unconflicted, conflicted_ids = separate_v1(state_sets)
    if not conflicted_ids:
        return unconflicted
    await cache.fetch(eid for ids in conflicted_ids.values() for eid in ids)
    conflicted: dict[StateKey, list[Event]] = {}
    for key, ids in conflicted_ids.items():
        events = [e for eid in sorted(ids) if (e := cache.get(eid)) is not None
                  and (admit_rejected or e.internal.rejected_reason is None)]
        if len(events) > 1:
            conflicted[key] = events
        elif events:
            unconflicted[key] = events[0].event_id
        # No known event at all: the key is left out.

    # R, as far as the auth checks of the conflicting events look at it.
    auth_ids: dict[StateKey, str] = {}
    for events in conflicted.values():
        for event in events:
            for key in auth_types_for_event(event) | {CREATE_KEY}:
                if key in unconflicted:
                    auth_ids[key] = unconflicted[key]
    await cache.fetch(auth_ids.values())
    auth_state = {key: e for key, eid in auth_ids.items() if (e := cache.get(eid)) is not None}

    resolved: dict[StateKey, Event] = {}
    if (POWER_LEVELS, "") in conflicted:
        resolved[(POWER_LEVELS, "")] = _resolve_auth_events(conflicted[(POWER_LEVELS, "")], auth_state)
    auth_state.update(resolved)
    for key, events in conflicted.items():
        if key[0] == JOIN_RULES:
            resolved[key] = _resolve_auth_events(events, auth_state)
    auth_state.update(resolved)
    for key, events in conflicted.items():
        if key[0] == MEMBER:
            resolved[key] = _resolve_auth_events(events, auth_state)
    auth_state.update(resolved)
    for key, events in conflicted.items():
        if key not in resolved:
            resolved[key] = _resolve_normal_events(events, auth_state)
    await cache.tick(len(conflicted))

    result = dict(unconflicted)
    result.update({key: event.event_id for key, event in resolved.items()})
    return result


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def _by_depth_descending(events: list[Event]) -> list[Event]:
    """Highest depth first, then lowest sha1(event_id)."""
    return sorted(events, key=lambda e: (-e.depth, _sha1(e.event_id)))


def _allowed(event: Event, auth_state: dict[StateKey, Event]) -> bool:
    if event.type == CREATE and event.state_key == "":
        create: Event | None = event
    else:
        create = auth_state.get(CREATE_KEY)
    if create is None:
        return False
    try:
        check_auth_rules(event, auth_state if create is not event else {}, create)
    except AuthError:
        return False
    return True


def _resolve_auth_events(events: list[Event], auth_state: dict[StateKey, Event]) -> Event:
    """Ascending depth (then descending sha1): the first is taken, then each next one
    while it is allowed in the state with its predecessor applied."""
    ascending = list(reversed(_by_depth_descending(events)))
    needed: set[StateKey] = set().union(*(auth_types_for_event(e) for e in events)) | {CREATE_KEY}
    state = {key: e for key, e in auth_state.items() if key in needed}
    chosen = ascending[0]
    for event in ascending[1:]:
        state[chosen.state_pair] = chosen
        if not _allowed(event, state):
            return chosen
        chosen = event
    return chosen


def _resolve_normal_events(events: list[Event], auth_state: dict[StateKey, Event]) -> Event:
    """The deepest event allowed in R; the shallowest if none is."""
    ordered = _by_depth_descending(events)
    for event in ordered:
        if _allowed(event, auth_state):
            return event
    return ordered[-1]
