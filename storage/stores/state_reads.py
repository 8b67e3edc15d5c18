"""Reads of room state in one transaction (issue 18: an initial /sync reads two states
per joined room; walking a delta chain link by link cost two queries per link).

Used through :class:`storage.stores.events.EventStore` (``get_state_for_groups``,
``get_state_at``, ``get_state_and_memberships_at``: what ``get_state_for_group`` and
``state_group_at`` read, in fewer round trips) and ``StateHistoryStore`` (the history
visibility and membership before events). Every delta chain is walked by one recursive
query (``_CHAIN``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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


# State entries kept by a StateGroupCache by default: an account in 300 rooms of 70
# members reads about 21,000 in its initial /sync; a room of 10,000 members has 10,000.
DEFAULT_STATE_CACHE_ENTRIES = 250_000


class StateGroupCache:
    """Each cached group's state and, once read, its members' (user, membership); and
    per (group, user) the two ids a visibility check reads (``_visibility_refs``).

    Why no invalidation: a state group never changes once committed (its entries are
    written in the transaction that creates it, and only a room's deletion removes
    them) and its id comes from a sequence, never reused; groups are only read in
    their own transactions, so an uncommitted group is never cached. Bounded by the
    number of state entries held; shared by the database threads (a lock); callers get
    copies, so what they do with a state never reaches the cache."""

    def __init__(self, max_entries: int = DEFAULT_STATE_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._groups: OrderedDict[int, StateMap] = OrderedDict()
        self._members: dict[int, dict[str, tuple[str, str]]] = {}
        # (group, user) -> (history visibility event id, the user's member event id) in
        # the group's state: what a timeline's visibility check reads (immutable too).
        self._refs: OrderedDict[tuple[int, str], tuple[str | None, str | None]] = \
            OrderedDict()
        self._held = 0

    def __len__(self) -> int:
        return len(self._groups)

    def states(self, groups: Iterable[int]) -> dict[int, StateMap]:
        out: dict[int, StateMap] = {}
        with self._lock:
            for g in groups:
                state = self._groups.get(g)
                if state is not None:
                    self._groups.move_to_end(g)
                    out[g] = dict(state)
        return out

    def members(self, group: int) -> dict[str, tuple[str, str]] | None:
        with self._lock:
            found = self._members.get(group)
            return dict(found) if found is not None else None

    def put(self, group: int, state: StateMap) -> None:
        if not state or len(state) > self.max_entries // 4:
            return  # nothing to reuse (a group without entries), or too big to hold
        with self._lock:
            if group in self._groups:
                return
            self._groups[group] = dict(state)
            self._held += len(state)
            while self._held > self.max_entries:
                old, dropped = self._groups.popitem(last=False)
                self._held -= len(dropped)
                self._members.pop(old, None)

    def refs(self, groups: Iterable[int], user_id: str
             ) -> dict[int, tuple[str | None, str | None]]:
        """What :func:`_visibility_refs` found for ``user_id`` in these groups, if held."""
        out: dict[int, tuple[str | None, str | None]] = {}
        with self._lock:
            for g in groups:
                found = self._refs.get((g, user_id))
                if found is not None:
                    self._refs.move_to_end((g, user_id))
                    out[g] = found
        return out

    def put_refs(self, user_id: str, refs: dict[int, tuple[str | None, str | None]]) -> None:
        """Bounded apart from the states (an entry is two ids): at most max_entries // 2."""
        with self._lock:
            for g, pair in refs.items():
                self._refs[(g, user_id)] = pair
            while len(self._refs) > self.max_entries // 2:
                self._refs.popitem(last=False)

    def put_members(self, group: int, members: dict[str, tuple[str, str]]) -> None:
        with self._lock:
            if group in self._groups:  # held only beside its state (and dropped with it)
                self._members[group] = dict(members)


def chunks(items: list[Any], size: int = 400) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def state_at(txn: Txn, room_id: str, position: int,
             cache: StateGroupCache | None = None) -> StateMap:
    """The state after the room's latest event at or before ``position``."""
    group = group_at(txn, room_id, position)
    return {} if group is None else state_for_groups(txn, [group], cache)[group]


def group_at(txn: Txn, room_id: str, position: int) -> int | None:
    """The state group :func:`state_at` reads."""
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
    return None if row is None or row[0] is None else int(row[0])


def state_and_memberships_at(txn: Txn, room_id: str, position: int,
                             cache: StateGroupCache | None = None,
                             ) -> tuple[StateMap, dict[str, tuple[str, str]]]:
    """:func:`state_at`, and (user, membership) of its member events from their table."""
    return states_and_memberships_at_many(txn, [room_id], position, cache)[0]


def states_at_many(txn: Txn, pairs: list[tuple[str, int]],
                   cache: StateGroupCache | None = None) -> list[StateMap]:
    """:func:`state_at` of each (room, position), in this one transaction."""
    groups = [group_at(txn, room_id, position) for room_id, position in pairs]
    states = state_for_groups(txn, sorted({g for g in groups if g is not None}), cache)
    return [dict(states[g]) if g is not None else {} for g in groups]


def states_and_memberships_at_many(txn: Txn, room_ids: list[str], position: int,
                                   cache: StateGroupCache | None = None,
                                   ) -> list[tuple[StateMap, dict[str, tuple[str, str]]]]:
    """:func:`state_and_memberships_at` of each room at ``position``, in this one
    transaction (an initial /sync's room summaries)."""
    groups = [group_at(txn, room_id, position) for room_id in room_ids]
    wanted = sorted({g for g in groups if g is not None})
    states = state_for_groups(txn, wanted, cache)
    members: dict[int, dict[str, tuple[str, str]]] = {}
    for g in wanted:
        known = cache.members(g) if cache is not None else None
        if known is not None:
            members[g] = known
    unread = [g for g in wanted if g not in members]
    ids = sorted({eid for g in unread for (etype, _), eid in states[g].items()
                  if etype == "m.room.member"})
    rows: dict[str, tuple[str, str]] = {}
    for chunk in chunks(ids):
        for eid, user_id, membership in txn.query(
                "SELECT m.event_id, m.user_id, m.membership FROM room_memberships m"
                " JOIN events e ON e.event_id = m.event_id"
                f" WHERE m.event_id IN ({','.join('?' for _ in chunk)})", tuple(chunk)):
            rows[str(eid)] = (str(user_id), str(membership))
    for g in unread:
        members[g] = {eid: rows[eid] for (etype, _), eid in states[g].items()
                      if etype == "m.room.member" and eid in rows}
        if cache is not None:
            cache.put_members(g, members[g])
    return [(dict(states[g]), dict(members[g])) if g is not None else ({}, {})
            for g in groups]


def state_for_groups(txn: Txn, wanted: list[int], cache: StateGroupCache | None = None
                     ) -> dict[int, StateMap]:
    """Each group's state: its delta chain, then the chain's entries (nearer win).
    With ``cache``, the groups it holds are not read, and those read are added."""
    if cache is not None:
        found = cache.states(wanted)
        missing = [g for g in wanted if g not in found]
        if missing:
            read = state_for_groups(txn, missing)
            for g, state in read.items():
                cache.put(g, state)
            found.update(read)
        return found
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


def _visibility_refs(txn: Txn, groups: Iterable[int], user_id: str,
                     cache: StateGroupCache | None = None,
                     ) -> dict[int, tuple[str | None, str | None]]:
    """state group -> (history visibility event id, ``user_id``'s member event id) in
    that group's state. With ``cache``, groups it answers for are not read."""
    if cache is not None:
        wanted_all = set(groups)
        found = cache.refs(wanted_all, user_id)
        missing = wanted_all.difference(found)
        if missing:
            read = _visibility_refs(txn, missing, user_id)
            cache.put_refs(user_id, read)
            found.update(read)
        return found
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


def state_before_for_visibility(txn: Txn, event_ids: list[str], user_id: str,
                                cache: StateGroupCache | None = None,
                                ) -> dict[str, tuple[str | None, str | None]]:
    """event id -> (history visibility event id, the user's member event id) in the
    state before the event; events without state (outliers, unknown) are left out."""
    before: dict[str, int | None] = {}
    for chunk in chunks(event_ids):
        for eid, group in txn.query(
                "SELECT event_id, state_group_before FROM event_state_groups"
                f" WHERE event_id IN ({','.join('?' for _ in chunk)})", tuple(chunk)):
            before[eid] = int(group) if group is not None else None
    refs = _visibility_refs(txn, (g for g in before.values() if g is not None), user_id,
                            cache)
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
