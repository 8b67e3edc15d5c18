"""Application services (homeserver/appservice/): the per-service queue of events to
send, the transaction in flight, the last acknowledged transaction id, and the
per-network public room lists services publish (schema 0033)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from storage.database import Database, Txn


@dataclass(frozen=True)
class PendingTxn:
    """A transaction created for a service and not yet acknowledged."""

    as_id: str
    txn_id: int
    event_ids: list[str]
    up_to: int


def _ensure_state(txn: Txn, as_id: str) -> None:
    txn.execute("INSERT INTO appservice_state (as_id) VALUES (?) ON CONFLICT (as_id) DO NOTHING",
                (as_id,))


class AppserviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def enqueue(self, as_ids: Iterable[str], event_id: str, stream_ordering: int) -> None:
        """Queue one persisted event for each service interested in it (idempotent)."""
        rows = [(a, stream_ordering, event_id) for a in as_ids]
        if not rows:
            return

        def _do(txn: Txn) -> None:
            for row in rows:
                txn.execute("INSERT INTO appservice_queue (as_id, stream_ordering, event_id)"
                            " VALUES (?, ?, ?) ON CONFLICT (as_id, stream_ordering) DO NOTHING",
                            row)
        await self._db.run("appservice_enqueue", _do)

    async def next_txn(self, as_id: str, limit: int) -> PendingTxn | None:
        """The transaction to send now: the one in flight (same id, same events, after
        a restart too) or a new one made of up to ``limit`` queued events, which leave
        the queue in the same database transaction. None when nothing is queued."""

        def _do(txn: Txn) -> PendingTxn | None:
            row = txn.query_one("SELECT txn_id, event_ids, up_to FROM appservice_txns"
                                " WHERE as_id = ? ORDER BY txn_id LIMIT 1", (as_id,))
            if row is not None:
                return PendingTxn(as_id, int(row[0]), json.loads(row[1]), int(row[2]))
            queued = txn.query("SELECT stream_ordering, event_id FROM appservice_queue"
                               " WHERE as_id = ? ORDER BY stream_ordering LIMIT ?",
                               (as_id, limit))
            if not queued:
                return None
            _ensure_state(txn, as_id)
            last = txn.query_one("SELECT last_txn_id FROM appservice_state WHERE as_id = ?",
                                 (as_id,))
            txn_id = int(last[0]) + 1 if last else 1
            up_to = int(queued[-1][0])
            event_ids = [str(r[1]) for r in queued]
            txn.execute("INSERT INTO appservice_txns (as_id, txn_id, event_ids, up_to)"
                        " VALUES (?, ?, ?, ?)", (as_id, txn_id, json.dumps(event_ids), up_to))
            txn.execute("DELETE FROM appservice_queue WHERE as_id = ? AND stream_ordering <= ?",
                        (as_id, up_to))
            return PendingTxn(as_id, txn_id, event_ids, up_to)
        return await self._db.run("appservice_next_txn", _do)

    async def new_empty_txn(self, as_id: str) -> int:
        """A transaction id for a transaction with no stored events (ephemeral only)."""

        def _do(txn: Txn) -> int:
            _ensure_state(txn, as_id)
            row = txn.query_one("SELECT last_txn_id FROM appservice_state WHERE as_id = ?",
                                (as_id,))
            txn_id = int(row[0]) + 1 if row else 1
            txn.execute("UPDATE appservice_state SET last_txn_id = ? WHERE as_id = ?",
                        (txn_id, as_id))
            return txn_id
        return await self._db.run("appservice_empty_txn", _do)

    async def complete_txn(self, pending: PendingTxn) -> None:
        """The service acknowledged ``pending``: it is never sent again."""

        def _do(txn: Txn) -> None:
            _ensure_state(txn, pending.as_id)
            txn.execute("DELETE FROM appservice_txns WHERE as_id = ? AND txn_id = ?",
                        (pending.as_id, pending.txn_id))
            txn.execute("UPDATE appservice_state SET last_txn_id = ?, stream_position ="
                        " CASE WHEN stream_position > ? THEN stream_position ELSE ? END"
                        " WHERE as_id = ?",
                        (pending.txn_id, pending.up_to, pending.up_to, pending.as_id))
        await self._db.run("appservice_complete_txn", _do)

    async def get_state(self, as_id: str) -> tuple[int, int] | None:
        """(last acknowledged txn id, highest stream ordering sent), or None."""
        row = await self._db.query_one(
            "appservice_state", "SELECT last_txn_id, stream_position FROM appservice_state"
            " WHERE as_id = ?", as_id)
        return (int(row[0]), int(row[1])) if row else None

    # -- replay after a crash --------------------------------------------------------

    async def get_scan_position(self) -> int | None:
        row = await self._db.query_one(
            "appservice_scan_position", "SELECT stream_ordering FROM appservice_scan_position")
        return int(row[0]) if row else None

    async def set_scan_position(self, stream_ordering: int) -> None:
        await self._db.execute(
            "appservice_set_scan_position",
            "INSERT INTO appservice_scan_position (lock, stream_ordering) VALUES ('X', ?)"
            " ON CONFLICT (lock) DO UPDATE SET stream_ordering = excluded.stream_ordering",
            stream_ordering)

    async def events_after(self, after: int, limit: int) -> list[tuple[int, str]]:
        """(stream ordering, event id) of events in their room's graph (not outliers nor
        rejected) after ``after``, in order: what the fan-out may not have queued."""
        rows = await self._db.query(
            "appservice_events_after", "SELECT stream_ordering, event_id FROM events"
            " WHERE stream_ordering > ? AND outlier = ? AND rejected_reason IS NULL"
            " ORDER BY stream_ordering LIMIT ?", after, False, limit)
        return [(int(r[0]), str(r[1])) for r in rows]

    async def handled_up_to(self, as_id: str) -> int:
        """The highest stream ordering ``as_id`` has acknowledged or has in flight:
        events at or below it are never queued again."""
        row = await self._db.query_one(
            "appservice_handled_up_to",
            "SELECT COALESCE((SELECT stream_position FROM appservice_state WHERE as_id = ?),"
            " 0), COALESCE((SELECT MAX(up_to) FROM appservice_txns WHERE as_id = ?), 0)",
            as_id, as_id)
        return max(int(row[0]), int(row[1])) if row else 0

    async def has_pending(self, as_id: str) -> bool:
        row = await self._db.query_one(
            "appservice_has_pending",
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM appservice_txns WHERE as_id = ?)"
            " OR EXISTS (SELECT 1 FROM appservice_queue WHERE as_id = ?)", as_id, as_id)
        return row is not None

    # -- per-network public room lists -------------------------------------------------

    async def set_room_listed(self, as_id: str, network_id: str, room_id: str,
                              listed: bool) -> None:
        if listed:
            await self._db.execute(
                "appservice_list_room",
                "INSERT INTO appservice_room_list (as_id, network_id, room_id) VALUES (?, ?, ?)"
                " ON CONFLICT (as_id, network_id, room_id) DO NOTHING",
                as_id, network_id, room_id)
        else:
            await self._db.execute(
                "appservice_unlist_room",
                "DELETE FROM appservice_room_list WHERE as_id = ? AND network_id = ?"
                " AND room_id = ?", as_id, network_id, room_id)

    async def listed_rooms(self, as_id: str | None = None,
                           network_id: str | None = None) -> list[str]:
        """Rooms on one network's list (``as_id`` + ``network_id``) or on any."""
        if as_id is None:
            rows = await self._db.query("appservice_listed_all",
                                        "SELECT DISTINCT room_id FROM appservice_room_list")
        else:
            rows = await self._db.query(
                "appservice_listed", "SELECT room_id FROM appservice_room_list"
                " WHERE as_id = ? AND network_id = ?", as_id, network_id)
        return sorted(str(r[0]) for r in rows)
