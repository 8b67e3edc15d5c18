"""``event_search``: casefolded message bodies for server-side search (opt-in).

Matching is by substring (every term must occur), with LIKE on both engines: no
full-text engine to configure and the same results on SQLite and PostgreSQL. Queries
are always scoped to a list of rooms (the requester's joined, unencrypted rooms) and,
within each, to the stream positions the requester may see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn
from storage.stores.relations import Ranges, ranges_clause, set_progress
from storage.stores.room_directory import escape_like

# Bound parameters spent on room ids and visible ranges per statement.
MAX_PARAMS = 600


@dataclass(frozen=True)
class SearchRow:
    event_id: str
    room_id: str
    sender: str
    stream_ordering: int
    body: str


@dataclass(frozen=True)
class SearchQuery:
    # room id -> the stream positions of that room the requester may see: every count,
    # rank and page is computed over those only, so none reflects a hidden event.
    rooms: Mapping[str, Ranges]
    terms: Sequence[str]  # casefolded, non-empty
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()


def _room_chunks(q: SearchQuery) -> list[list[str]]:
    """Rooms in groups whose range bounds keep a statement's parameters few."""
    chunks: list[list[str]] = [[]]
    weight = 0
    for room_id, ranges in q.rooms.items():
        if not ranges:
            continue
        cost = 1 + 2 * len(ranges)
        if chunks[-1] and weight + cost > MAX_PARAMS:
            chunks.append([])
            weight = 0
        chunks[-1].append(room_id)
        weight += cost
    return [c for c in chunks if c]


def _where(q: SearchQuery, room_chunk: Sequence[str]) -> tuple[str, list[Any]]:
    per_room: list[str] = []
    args: list[Any] = []
    for room_id in room_chunk:
        clause, range_args = ranges_clause(q.rooms[room_id])
        per_room.append(f"(room_id = ? AND {clause})")
        args += [room_id, *range_args]
    clauses = ["(" + " OR ".join(per_room) + ")"]
    for term in q.terms:
        clauses.append("body LIKE ? ESCAPE '\\'")
        args.append(f"%{escape_like(term)}%")
    if q.senders is not None:
        clauses.append(f"sender IN ({','.join('?' for _ in q.senders)})" if q.senders else "1 = 0")
        args += list(q.senders)
    if q.not_senders:
        clauses.append(f"sender NOT IN ({','.join('?' for _ in q.not_senders)})")
        args += list(q.not_senders)
    return " AND ".join(clauses), args


class SearchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def apply(self, add: Sequence[SearchRow], remove: Sequence[tuple[str, str]],
                    progress: int | None = None) -> None:
        def _do(txn: Txn) -> None:
            for row in add:
                if txn.query_one("SELECT 1 FROM event_search WHERE event_id = ?", (row.event_id,)):
                    continue
                txn.execute(
                    "INSERT INTO event_search (event_id, room_id, sender, stream_ordering, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (row.event_id, row.room_id, row.sender, row.stream_ordering, row.body),
                )
            for room_id, event_id in remove:
                txn.execute("DELETE FROM event_search WHERE event_id = ? AND room_id = ?",
                            (event_id, room_id))
            if progress is not None:
                set_progress(txn, "search", progress)

        await self._db.run("apply_search", _do)

    async def remove_room(self, room_id: str) -> None:
        await self._db.execute("search_remove_room", "DELETE FROM event_search WHERE room_id = ?",
                               room_id)

    async def clear(self) -> None:
        """Forget every indexed body (search was switched off) and start over next time."""

        def _do(txn: Txn) -> None:
            txn.execute("DELETE FROM event_search")
            txn.execute("DELETE FROM event_index_progress WHERE name = ?", ("search",))

        await self._db.run("search_clear", _do)

    async def search(self, q: SearchQuery, before: int | None, limit: int) -> list[SearchRow]:
        """Matches at positions < ``before``, newest first."""
        out: list[SearchRow] = []
        for chunk in _room_chunks(q):
            where, args = _where(q, chunk)
            if before is not None:
                where += " AND stream_ordering < ?"
                args.append(before)
            rows = await self._db.query(
                "search",
                f"SELECT event_id, room_id, sender, stream_ordering, body FROM event_search"
                f" WHERE {where} ORDER BY stream_ordering DESC LIMIT ?",
                *args, limit,
            )
            out += [SearchRow(r[0], r[1], r[2], int(r[3]), r[4]) for r in rows]
        out.sort(key=lambda r: r.stream_ordering, reverse=True)
        return out[:limit]

    async def count(self, q: SearchQuery) -> int:
        """How many matches there are in the visible ranges of the query's rooms."""
        total = 0
        for chunk in _room_chunks(q):
            where, args = _where(q, chunk)
            row = await self._db.query_one("search_count",
                                           f"SELECT COUNT(*) FROM event_search WHERE {where}", *args)
            total += int(row[0]) if row else 0
        return total
