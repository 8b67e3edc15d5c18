"""Reads of room state in one transaction (issue 18: an initial /sync reads two states
per joined room; walking a delta chain link by link cost two queries per link).

Used through :class:`storage.stores.events.EventStore` (``get_state_for_groups``,
``get_state_at``, ``get_state_and_memberships_at``: what ``get_state_for_group`` and
``state_group_at`` read, in fewer round trips) and ``StateHistoryStore`` (the history
visibility and membership before events). Every delta chain is walked by one recursive
query (``_CHAIN``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.database import Txn

StateMap = dict[tuple[str, str], str]  # as storage.stores.events.StateMap


VIS_KEY = ("m.room.history_visibility", "")
# A set of groups and every group of their delta chains (formatted with the groups'
# placeholders): the chains are walked by the database, not link by link.
_CHAIN = ("WITH RECURSIVE chain(id) AS (SELECT id FROM state_groups WHERE id IN ({marks})"
          " UNION SELECT g.prev_group FROM state_groups g JOIN chain c ON g.id = c.id"
          " WHERE g.prev_group IS NOT NULL) ")


def chunks(items: list[Any], size: int = 400) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def state_at(txn: Txn, room_id: str, position: int) -> StateMap:
    """The state after the room's latest event at or before ``position``."""
    row = txn.query_one(
        "SELECT g.state_group FROM events e JOIN event_state_groups g"
        " ON g.event_id = e.event_id WHERE e.room_id = ? AND e.stream_ordering <= ?"
        " AND e.soft_failed = ? AND e.rejected_reason IS NULL"
        " ORDER BY e.stream_ordering DESC LIMIT 1", (room_id, position, False))
    if row is None:  # as state_group_at: the state before the first event after it
        row = txn.query_one(
            "SELECT g.state_group_before FROM events e JOIN event_state_groups g"
            " ON g.event_id = e.event_id WHERE e.room_id = ? AND e.stream_ordering > ?"
            " AND e.soft_failed = ? AND e.rejected_reason IS NULL"
            " ORDER BY e.stream_ordering ASC LIMIT 1", (room_id, position, False))
    if row is None or row[0] is None:
        return {}
    group = int(row[0])
    return state_for_groups(txn, [group])[group]


def state_and_memberships_at(txn: Txn, room_id: str, position: int
                             ) -> tuple[StateMap, dict[str, tuple[str, str]]]:
    """:func:`state_at`, and (user, membership) of its member events from their table."""
    state = state_at(txn, room_id, position)
    members = [eid for (etype, _), eid in state.items() if etype == "m.room.member"]
    out: dict[str, tuple[str, str]] = {}
    for chunk in chunks(members):
        for eid, user_id, membership in txn.query(
                "SELECT m.event_id, m.user_id, m.membership FROM room_memberships m"
                " JOIN events e ON e.event_id = m.event_id"
                f" WHERE m.event_id IN ({','.join('?' for _ in chunk)})", tuple(chunk)):
            out[str(eid)] = (str(user_id), str(membership))
    return state, out


def state_for_groups(txn: Txn, wanted: list[int]) -> dict[int, StateMap]:
    """Each group's state: its delta chain, then the chain's entries (nearer win)."""
    links: dict[int, int | None] = {}
    entries: dict[int, list[tuple[str, str, str]]] = {}
    for chunk in chunks(wanted):
        with_chain = _CHAIN.format(marks=",".join("?" for _ in chunk))
        for gid, prev in txn.query(with_chain + "SELECT s.id, s.prev_group FROM state_groups s"
                                   " JOIN chain c ON s.id = c.id", tuple(chunk)):
            links[int(gid)] = int(prev) if prev is not None else None
    # Entries of every group of the chains, and of a wanted group without a row in
    # state_groups (read as get_state_for_group reads it: its entries alone).
    ids = sorted(set(links) | set(wanted))
    for chunk in chunks(ids):
        for gid, t, sk, eid in txn.query(
                "SELECT state_group, type, state_key, event_id FROM state_group_entries"
                f" WHERE state_group IN ({','.join('?' for _ in chunk)})", tuple(chunk)):
            entries.setdefault(int(gid), []).append((t, sk, eid))
    out: dict[int, StateMap] = {}
    for group in wanted:
        state: StateMap = {}
        current: int | None = group
        while current is not None:
            for t, sk, eid in entries.get(current, ()):
                state.setdefault((t, sk), eid)
            current = links.get(current)
        out[group] = state
    return out


def _visibility_refs(txn: Txn, groups: Iterable[int], user_id: str
                     ) -> dict[int, tuple[str | None, str | None]]:
    """state group -> (history visibility event id, ``user_id``'s member event id) in
    that group's state."""
    # The groups and their delta chains (bounded by _chain_limit), then only the
    # two keys wanted from their entries: two queries per chunk of groups.
    wanted = sorted(set(groups))
    links: dict[int, int | None] = {}
    entries: dict[int, dict[tuple[str, str], str]] = {}
    for chunk in chunks(wanted):
        with_chain = _CHAIN.format(marks=",".join("?" for _ in chunk))
        for gid, prev in txn.query(
                with_chain + "SELECT s.id, s.prev_group FROM state_groups s"
                " JOIN chain c ON s.id = c.id", tuple(chunk)):
            links[int(gid)] = int(prev) if prev is not None else None
        for gid, t, sk, eid in txn.query(
                with_chain + "SELECT e.state_group, e.type, e.state_key, e.event_id"
                " FROM state_group_entries e JOIN chain c ON e.state_group = c.id"
                " WHERE (e.type = ? AND e.state_key = ?) OR (e.type = ? AND e.state_key = ?)",
                (*chunk, *VIS_KEY, "m.room.member", user_id)):
            entries.setdefault(int(gid), {})[(t, sk)] = eid
    member_key: tuple[str, str] = ("m.room.member", user_id)
    memo: dict[int, tuple[str | None, str | None]] = {}

    def at(group: int) -> tuple[str | None, str | None]:
        if group in memo:
            return memo[group]
        vis = member = None
        current: int | None = group
        while current is not None and (vis is None or member is None):
            found = entries.get(current, {})
            vis = vis or found.get(VIS_KEY)
            member = member or found.get(member_key)
            current = links.get(current)
        memo[group] = (vis, member)
        return memo[group]

    return {g: at(g) for g in wanted}


def state_before_for_visibility(txn: Txn, event_ids: list[str], user_id: str
                                 ) -> dict[str, tuple[str | None, str | None]]:
    """event id -> (history visibility event id, the user's member event id) in the
    state before the event; events without state (outliers, unknown) are left out."""
    before: dict[str, int | None] = {}
    for chunk in chunks(event_ids):
        for eid, group in txn.query(
                "SELECT event_id, state_group_before FROM event_state_groups"
                f" WHERE event_id IN ({','.join('?' for _ in chunk)})", tuple(chunk)):
            before[eid] = int(group) if group is not None else None
    refs = _visibility_refs(txn, (g for g in before.values() if g is not None), user_id)
    return {eid: refs[g] if g is not None else (None, None) for eid, g in before.items()}


# Where the state before the room's timeline events changes, in stream order: the first
# event, and each whose state group before differs from the previous one's (an event
# without one reads as group -1). The database scans, only change points come back.
_SEGMENTS_SQL = (
    "SELECT stream_ordering, grp FROM (SELECT e.stream_ordering,"
    " COALESCE(g.state_group_before, -1) AS grp,"
    " LAG(COALESCE(g.state_group_before, -1)) OVER (ORDER BY e.stream_ordering) AS prev"
    " FROM events e LEFT JOIN event_state_groups g ON g.event_id = e.event_id"
    " WHERE e.room_id = ? AND e.outlier = ?) t"
    " WHERE prev IS NULL OR prev <> grp ORDER BY stream_ordering")


def visibility_segments(txn: Txn, room_id: str, user_id: str
                         ) -> tuple[list[tuple[int, str | None, str | None]],
                                    list[tuple[int, str, str | None, str | None]]]:
    """([(first position, vis event id, member event id)] of the runs of timeline events
    sharing the state before them, in stream order; [(position, event id, vis event id,
    member event id before it)] of the room's history-visibility changes)."""
    segments = [(int(pos), int(grp)) for pos, grp in
                txn.query(_SEGMENTS_SQL, (room_id, False))]
    changes = [(int(pos), str(eid), int(grp) if grp is not None else -1) for pos, eid, grp in
               txn.query(
                   "SELECT e.stream_ordering, e.event_id, g.state_group_before FROM events e"
                   " LEFT JOIN event_state_groups g ON g.event_id = e.event_id"
                   " WHERE e.room_id = ? AND e.type = ? AND e.state_key = ? AND e.outlier = ?"
                   " ORDER BY e.stream_ordering", (room_id, *VIS_KEY, False))]
    refs = _visibility_refs(txn, {g for _p, g in segments if g >= 0}
                            | {g for _p, _e, g in changes if g >= 0}, user_id)
    none: tuple[str | None, str | None] = (None, None)
    return ([(p, *refs.get(g, none)) for p, g in segments],
            [(p, e, *refs.get(g, none)) for p, e, g in changes])
