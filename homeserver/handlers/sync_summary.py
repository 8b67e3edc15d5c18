"""A joined room's summary in /sync (spec RoomSummary): member counts and heroes,
computed from a state and the membership rows of its member events (so a big room's
member events need not be decoded)."""

from __future__ import annotations

from typing import Any

from homeserver.events.model import Event
from storage.stores.events import StateMap

JsonDict = dict[str, Any]
MAX_HEROES = 5


def summary_event_ids(state: StateMap, rows: dict[str, tuple[str, str]]) -> list[str]:
    """The events :func:`summary_of` needs decoded: members without a membership row,
    and the room's name and canonical alias."""
    return [eid for (etype, _), eid in state.items()
            if etype == "m.room.member" and eid not in rows] + \
        [state[(t, "")] for t in ("m.room.name", "m.room.canonical_alias") if (t, "") in state]


def summary_of(state: StateMap, rows: dict[str, tuple[str, str]], found: dict[str, Event],
               user_id: str) -> JsonDict:
    """The room summary of ``state``: counts, and heroes only when the room has no name
    or canonical alias (Synapse): up to 5 other joined/invited users, sorted; if none,
    those who left or were banned. ``rows``: (user, membership) of member events from
    their table; ``found``: the events of :func:`summary_event_ids`."""
    by_membership: dict[str, list[str]] = {}
    for (etype, _), eid in state.items():
        if etype != "m.room.member":
            continue
        row = rows.get(eid)
        if row is not None:
            by_membership.setdefault(row[1], []).append(row[0])
            continue
        ev = found.get(eid)
        if ev is not None and ev.state_key is not None:
            by_membership.setdefault(str(ev.content.get("membership")), []).append(
                ev.state_key)
    joined = by_membership.get("join", [])
    invited = by_membership.get("invite", [])
    summary: JsonDict = {"m.joined_member_count": len(joined),
                         "m.invited_member_count": len(invited)}
    named = any(found.get(eid) is not None and (
        found[eid].content.get("name") or found[eid].content.get("alias"))
        for eid in (state[(t, "")] for t in ("m.room.name", "m.room.canonical_alias")
                    if (t, "") in state))
    if not named:
        heroes = [u for u in joined + invited if u != user_id]
        if not heroes:
            heroes = [u for u in by_membership.get("leave", []) + by_membership.get(
                "ban", []) if u != user_id]
        summary["m.heroes"] = sorted(heroes)[:MAX_HEROES]
    return summary
