"""``event_search``: casefolded message bodies for server-side search (opt-in).

Matching is by substring (every term must occur), with LIKE on both engines: no
full-text engine to configure and the same results on SQLite and PostgreSQL. Queries
are always scoped to a list of rooms (the requester's joined, unencrypted rooms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn
from storage.stores.relations import set_progress
from storage.stores.room_directory import escape_like

ROOM_CHUNK = 500


@dataclass(frozen=True)
class SearchRow:
    event_id: str
    room_id: str
    sender: str
    stream_ordering: int
    body: str


@dataclass(frozen=True)
class SearchQuery:
    room_ids: Sequence[str]
    terms: Sequence[str]  # casefolded, non-empty
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()


def _where(q: SearchQuery, room_chunk: Sequence[str]) -> tuple[str, list[Any]]:
    clauses = [f"room_id IN ({','.join('?' for _ in room_chunk)})"]
    args: list[Any] = list(room_chunk)
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
        for i in range(0, len(q.room_ids), ROOM_CHUNK):
            where, args = _where(q, q.room_ids[i:i + ROOM_CHUNK])
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
        total = 0
        for i in range(0, len(q.room_ids), ROOM_CHUNK):
            where, args = _where(q, q.room_ids[i:i + ROOM_CHUNK])
            row = await self._db.query_one("search_count",
                                           f"SELECT COUNT(*) FROM event_search WHERE {where}", *args)
            total += int(row[0]) if row else 0
        return total
