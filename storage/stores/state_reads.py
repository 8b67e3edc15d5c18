"""Reads of room state in one transaction (issue 18: an initial /sync reads two states
per joined room; walking a delta chain link by link cost two queries per link).

Used through :class:`storage.stores.events.EventStore` (``get_state_for_groups``,
``get_state_at``, ``get_state_and_memberships_at``); they read what
``get_state_for_group`` and ``state_group_at`` read, in fewer round trips.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.database import Txn

StateMap = dict[tuple[str, str], str]  # as storage.stores.events.StateMap


def _chunks(items: list[Any], size: int = 400) -> Iterable[list[Any]]:
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
    for chunk in _chunks(members):
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
    chain = ("WITH RECURSIVE chain(id) AS (SELECT id FROM state_groups WHERE id IN ({marks})"
             " UNION SELECT g.prev_group FROM state_groups g JOIN chain c ON g.id = c.id"
             " WHERE g.prev_group IS NOT NULL) ")
    for chunk in _chunks(wanted):
        with_chain = chain.format(marks=",".join("?" for _ in chunk))
        for gid, prev in txn.query(with_chain + "SELECT s.id, s.prev_group FROM state_groups s"
                                   " JOIN chain c ON s.id = c.id", tuple(chunk)):
            links[int(gid)] = int(prev) if prev is not None else None
    # Entries of every group of the chains, and of a wanted group without a row in
    # state_groups (read as get_state_for_group reads it: its entries alone).
    ids = sorted(set(links) | set(wanted))
    for chunk in _chunks(ids):
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
