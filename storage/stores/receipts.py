"""The ``receipts`` table: the latest m.read / m.read.private receipt of each user per
room and thread, each write positioned on the ``receipts`` stream."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.database import Database, Txn

UNTHREADED = ""  # thread_id column value of an unthreaded receipt
_CHUNK = 200  # room ids per IN (...) list


@dataclass(frozen=True)
class ReceiptRecord:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str | None  # None: unthreaded
    event_id: str
    ts: int
    stream_id: int


_COLS = "room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id"


def _row(r: Sequence) -> ReceiptRecord:
    return ReceiptRecord(r[0], r[1], r[2], r[3] or None, r[4], int(r[5]), int(r[6]))


def _chunks(items: Iterable[str]) -> Iterable[list[str]]:
    ids = list(dict.fromkeys(items))
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def allocate_stream_id(self) -> int:
        return await self._db.run("next_receipt_stream", lambda txn: txn.next_stream_id("receipts"))

    async def max_stream_id(self) -> int:
        row = await self._db.query_one("max_receipts", "SELECT MAX(stream_id) FROM receipts")
        return int(row[0]) if row and row[0] is not None else 0

    async def upsert_receipt(
        self, room_id: str, receipt_type: str, user_id: str, thread_id: str | None,
        event_id: str, event_stream_ordering: int, ts: int, stream_id: int,
    ) -> bool:
        """Move the receipt to ``event_id``; False (nothing written) when the current
        receipt is already at that event or a later one: receipts only move forward."""

        def _do(txn: Txn) -> bool:
            key = (room_id, receipt_type, user_id, thread_id or UNTHREADED)
            row = txn.query_one(
                "SELECT event_stream_ordering FROM receipts WHERE room_id = ?"
                " AND receipt_type = ? AND user_id = ? AND thread_id = ?", key)
            if row is not None and int(row[0]) >= event_stream_ordering:
                return False
            txn.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                " event_stream_ordering, ts, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id,"
                " event_stream_ordering = excluded.event_stream_ordering,"
                " ts = excluded.ts, stream_id = excluded.stream_id",
                (*key, event_id, event_stream_ordering, ts, stream_id),
            )
            return True

        return await self._db.run("upsert_receipt", _do)

    async def get_receipts(self, room_ids: Iterable[str], since: int, upto: int
                           ) -> list[ReceiptRecord]:
        """Receipts of these rooms written at positions in (since, upto], in stream order."""
        out: list[ReceiptRecord] = []
        for chunk in _chunks(room_ids):
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "get_receipts",
                f"SELECT {_COLS} FROM receipts WHERE room_id IN ({marks})"
                " AND stream_id > ? AND stream_id <= ?",
                *chunk, since, upto,
            )
            out.extend(_row(r) for r in rows)
        out.sort(key=lambda r: r.stream_id)
        return out

    async def has_receipts_since(self, room_ids: Iterable[str], viewer: str, private_type: str,
                                 since: int) -> bool:
        """Whether ``viewer`` may see a receipt written after ``since`` in these rooms
        (other users' ``private_type`` receipts do not count)."""
        for chunk in _chunks(room_ids):
            marks = ",".join("?" for _ in chunk)
            row = await self._db.query_one(
                "has_receipts_since",
                f"SELECT 1 FROM receipts WHERE room_id IN ({marks}) AND stream_id > ?"
                " AND (receipt_type <> ? OR user_id = ?) LIMIT 1",
                *chunk, since, private_type, viewer,
            )
            if row is not None:
                return True
        return False
