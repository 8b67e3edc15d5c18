"""``event_relations``: which event relates to which, and how (m.relates_to).

The table copies what the read paths filter and order on (sender, type, position) so
/relations pages, thread lists and bundled aggregations never join ``events``. Every
query is scoped to a room: a relation written in another room than its parent is never
returned for that parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.crypto.content import SEALED_LIKE
from storage.database import Database, Txn

_COLS = "event_id, relates_to_id, rel_type, sender, type, is_state, origin_server_ts, stream_ordering"
RECURSION_DEPTH = 3
MAX_DESCENDANTS = 5000


@dataclass(frozen=True)
class Relation:
    event_id: str
    relates_to_id: str
    rel_type: str
    sender: str
    type: str
    is_state: bool
    origin_server_ts: int
    stream_ordering: int


@dataclass(frozen=True)
class ThreadSummary:
    root_id: str
    count: int
    latest_position: int


def _relation(row: Sequence[Any]) -> Relation:
    return Relation(row[0], row[1], row[2], row[3], row[4], bool(row[5]), int(row[6]), int(row[7]))


def _chunks(ids: Iterable[str], size: int = 200) -> Iterable[list[str]]:
    items = list(dict.fromkeys(ids))
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" for _ in items)


# ``(after, upto)`` stream-position intervals (``after < position <= upto``, ``upto`` None:
# no end), as VisibilityHandler.visible_ranges gives them.
Ranges = Sequence[tuple[int, int | None]]


def ranges_clause(ranges: Ranges, column: str = "stream_ordering") -> tuple[str, list[Any]]:
    """SQL restricting ``column`` to the intervals (no interval: nothing matches)."""
    if not ranges:
        return "1 = 0", []
    parts: list[str] = []
    args: list[Any] = []
    for after, upto in ranges:
        if upto is None:
            parts.append(f"{column} > ?")
            args.append(after)
        else:
            parts.append(f"({column} > ? AND {column} <= ?)")
            args += [after, upto]
    return "(" + " OR ".join(parts) + ")", args


@dataclass(frozen=True)
class RelationRow:
    """What the indexer writes for one child event."""

    event_id: str
    room_id: str
    relates_to_id: str
    rel_type: str
    aggregation_key: str | None
    sender: str
    type: str
    is_state: bool
    origin_server_ts: int
    stream_ordering: int


class RelationsStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ writing

    async def apply(self, add: Sequence[RelationRow], remove: Sequence[tuple[str, str]],
                    progress: int | None = None) -> None:
        """Insert ``add`` (ignoring rows already there), delete ``remove`` ((room, event)
        pairs: redacted children) and optionally record the indexed position."""

        def _do(txn: Txn) -> None:
            for row in add:
                if txn.query_one("SELECT 1 FROM event_relations WHERE event_id = ?", (row.event_id,)):
                    continue
                txn.execute(
                    "INSERT INTO event_relations (event_id, room_id, relates_to_id, rel_type,"
                    " aggregation_key, sender, type, is_state, origin_server_ts, stream_ordering)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.event_id, row.room_id, row.relates_to_id, row.rel_type, row.aggregation_key,
                     row.sender, row.type, row.is_state, row.origin_server_ts, row.stream_ordering),
                )
            for room_id, event_id in remove:
                txn.execute("DELETE FROM event_relations WHERE event_id = ? AND room_id = ?",
                            (event_id, room_id))
            if progress is not None:
                set_progress(txn, "relations", progress)

        await self._db.run("apply_relations", _do)

    async def get_progress(self, name: str) -> int:
        row = await self._db.query_one(
            "index_progress", "SELECT stream_ordering FROM event_index_progress WHERE name = ?", name)
        return int(row[0]) if row else 0

    async def set_progress(self, name: str, position: int) -> None:
        await self._db.run("set_index_progress", set_progress, name, position)

    async def events_to_index(self, after: int, upto: int, types: Sequence[str],
                              with_relations: bool, limit: int) -> list[tuple[str, int]]:
        """(event_id, position) of events in (after, upto], oldest first, that may matter
        to a derived index: those of ``types`` and, with ``with_relations``, any whose
        JSON mentions m.relates_to (the indexer parses them properly)."""
        cond = [f"e.type IN ({_marks(types)})"] if types else []
        args: list[Any] = list(types)
        if with_relations:
            # Event JSON sealed at rest (homeserver/crypto/content.py) cannot be looked
            # into here: every sealed event is a candidate.
            cond.append("(e.json LIKE ? OR e.json LIKE ?)")
            args += ['%"m.relates_to"%', SEALED_LIKE]
        rows = await self._db.query(
            "events_to_index",
            f"SELECT e.event_id, e.stream_ordering FROM events e"
            f" WHERE e.stream_ordering > ? AND e.stream_ordering <= ? AND ({' OR '.join(cond)})"
            f" ORDER BY e.stream_ordering LIMIT ?",
            after, upto, *args, limit,
        )
        return [(r[0], int(r[1])) for r in rows]

    # ------------------------------------------------------------------ /relations

    async def children(
        self, room_id: str, parent_id: str, rel_type: str | None, event_type: str | None,
        direction: str, from_pos: int | None, to_pos: int | None, limit: int, recurse: bool,
        ranges: Ranges,
    ) -> list[Relation]:
        """Children of ``parent_id`` (with ``recurse``, also their children, up to
        :data:`RECURSION_DEPTH` levels; the type filters apply to every level) by position:
        backwards = newest first, positions <= from and > to; forwards = oldest first,
        positions > from and <= to; only children at positions in ``ranges``."""
        visible, visible_args = ranges_clause(ranges)
        where = ["room_id = ?", visible]
        args: list[Any] = [room_id, *visible_args]
        if rel_type is not None:
            where.append("rel_type = ?")
            args.append(rel_type)
        if event_type is not None:
            where.append("type = ?")
            args.append(event_type)
        low, high = (to_pos, from_pos) if direction == "b" else (from_pos, to_pos)
        if low is not None:
            where.append("stream_ordering > ?")
            args.append(low)
        if high is not None:
            where.append("stream_ordering <= ?")
            args.append(high)
        order = "DESC" if direction == "b" else "ASC"
        parents = await self._descendants(room_id, parent_id) if recurse else [parent_id]
        out: list[Relation] = []
        for chunk in _chunks(parents, 500):
            rows = await self._db.query(
                "relation_page",
                f"SELECT {_COLS} FROM event_relations WHERE {' AND '.join(where)}"
                f" AND relates_to_id IN ({_marks(chunk)}) ORDER BY stream_ordering {order} LIMIT ?",
                *args, *chunk, limit,
            )
            out += [_relation(r) for r in rows]
        out.sort(key=lambda r: r.stream_ordering, reverse=direction == "b")
        return out[:limit]

    async def _descendants(self, room_id: str, parent_id: str) -> list[str]:
        """``parent_id`` and every event relating to it through up to RECURSION_DEPTH - 1
        intermediate relations (bounded, so a huge tree cannot make one request unbounded)."""
        out = [parent_id]
        seen = {parent_id}
        level = [parent_id]
        for _ in range(RECURSION_DEPTH - 1):
            found: list[str] = []
            for chunk in _chunks(level):
                rows = await self._db.query(
                    "relation_descendants",
                    f"SELECT event_id FROM event_relations WHERE room_id = ?"
                    f" AND relates_to_id IN ({_marks(chunk)})",
                    room_id, *chunk,
                )
                found += [r[0] for r in rows if r[0] not in seen]
            seen.update(found)
            out += found
            level = found
            if not level or len(out) > MAX_DESCENDANTS:
                break
        return out[:MAX_DESCENDANTS]

    # ------------------------------------------------------------------ aggregations

    async def relations_of(self, room_id: str, parent_ids: Iterable[str], rel_type: str
                           ) -> list[Relation]:
        """Every child of the given parents with ``rel_type``, oldest first."""
        out: list[Relation] = []
        for chunk in _chunks(parent_ids):
            rows = await self._db.query(
                "relations_of",
                f"SELECT {_COLS} FROM event_relations WHERE room_id = ? AND rel_type = ?"
                f" AND relates_to_id IN ({_marks(chunk)}) ORDER BY stream_ordering",
                room_id, rel_type, *chunk,
            )
            out += [_relation(r) for r in rows]
        return out

    async def child_kinds(self, room_id: str, parent_ids: Iterable[str]) -> dict[str, set[str]]:
        """parent id -> the rel_types of its children, for parents that have any (one
        cheap query, so pages without relations cost nothing more)."""
        out: dict[str, set[str]] = {}
        for chunk in _chunks(parent_ids):
            rows = await self._db.query(
                "child_kinds",
                f"SELECT DISTINCT relates_to_id, rel_type FROM event_relations WHERE room_id = ?"
                f" AND relates_to_id IN ({_marks(chunk)})",
                room_id, *chunk,
            )
            for parent, rel_type in rows:
                out.setdefault(parent, set()).add(rel_type)
        return out

    async def has_annotation(self, room_id: str, parent_id: str, sender: str, event_type: str,
                             key: str) -> bool:
        row = await self._db.query_one(
            "has_annotation",
            "SELECT 1 FROM event_relations WHERE relates_to_id = ? AND room_id = ? AND rel_type = ?"
            " AND sender = ? AND type = ? AND aggregation_key = ?",
            parent_id, room_id, "m.annotation", sender, event_type, key,
        )
        return row is not None

    async def thread_summaries(self, room_id: str, root_ids: Iterable[str], ranges: Ranges
                               ) -> dict[str, ThreadSummary]:
        """root id -> (replies, position of the latest) counting replies in ``ranges`` only."""
        visible, visible_args = ranges_clause(ranges)
        out: dict[str, ThreadSummary] = {}
        for chunk in _chunks(root_ids):
            rows = await self._db.query(
                "thread_summaries",
                f"SELECT relates_to_id, COUNT(*), MAX(stream_ordering) FROM event_relations"
                f" WHERE room_id = ? AND rel_type = ? AND {visible}"
                f" AND relates_to_id IN ({_marks(chunk)}) GROUP BY relates_to_id",
                room_id, "m.thread", *visible_args, *chunk,
            )
            out.update({r[0]: ThreadSummary(r[0], int(r[1]), int(r[2])) for r in rows})
        return out

    async def thread_events_at(self, room_id: str, positions: Iterable[int]) -> dict[int, Relation]:
        """The thread replies at the given positions (positions are unique per event)."""
        out: dict[int, Relation] = {}
        items = list(dict.fromkeys(positions))
        for i in range(0, len(items), 200):
            chunk = items[i:i + 200]
            rows = await self._db.query(
                "thread_events_at",
                f"SELECT {_COLS} FROM event_relations WHERE room_id = ? AND rel_type = ?"
                f" AND stream_ordering IN ({_marks(chunk)})",
                room_id, "m.thread", *chunk,
            )
            out.update({int(r[7]): _relation(r) for r in rows})
        return out

    async def threads_participated(self, room_id: str, root_ids: Iterable[str], user_id: str,
                                   ranges: Ranges) -> set[str]:
        """The roots the user replied to in ``ranges``."""
        visible, visible_args = ranges_clause(ranges)
        out: set[str] = set()
        for chunk in _chunks(root_ids):
            rows = await self._db.query(
                "threads_participated",
                f"SELECT DISTINCT relates_to_id FROM event_relations WHERE room_id = ?"
                f" AND rel_type = ? AND sender = ? AND {visible}"
                f" AND relates_to_id IN ({_marks(chunk)})",
                room_id, "m.thread", user_id, *visible_args, *chunk,
            )
            out.update(r[0] for r in rows)
        return out

    # ------------------------------------------------------------------ /threads

    async def thread_roots(self, room_id: str, before: tuple[int, str] | None, limit: int,
                           ranges: Ranges) -> list[tuple[str, int]]:
        """(root id, latest reply position), most recently active first, strictly after
        ``before`` in that order; replies outside ``ranges`` neither list nor order a
        thread."""
        visible, visible_args = ranges_clause(ranges)
        having = ""
        if before is not None:
            having = " HAVING MAX(stream_ordering) < ? OR (MAX(stream_ordering) = ? AND relates_to_id < ?)"
        rows = await self._db.query(
            "thread_roots",
            f"SELECT relates_to_id, MAX(stream_ordering) FROM event_relations"
            f" WHERE room_id = ? AND rel_type = ? AND {visible} GROUP BY relates_to_id" + having +
            " ORDER BY MAX(stream_ordering) DESC, relates_to_id DESC LIMIT ?",
            room_id, "m.thread", *visible_args,
            *((before[0], before[0], before[1]) if before else ()), limit,
        )
        return [(r[0], int(r[1])) for r in rows]


def set_progress(txn: Txn, name: str, position: int) -> None:
    """Move an index's position forward (never back)."""
    row = txn.query_one("SELECT stream_ordering FROM event_index_progress WHERE name = ?", (name,))
    if row is None:
        txn.execute("INSERT INTO event_index_progress (name, stream_ordering) VALUES (?, ?)",
                    (name, position))
    elif int(row[0]) < position:
        txn.execute("UPDATE event_index_progress SET stream_ordering = ? WHERE name = ?",
                    (position, name))
