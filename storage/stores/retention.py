"""Message retention (schema 0038): each room's current ``m.room.retention`` content,
read in room id order, and the rows of retention runs (status, cursor, counters).
The purge itself is :meth:`storage.stores.purge_history.PurgeHistoryStore.purge_batch`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Database

RETENTION_TYPE = "m.room.retention"


@dataclass(frozen=True)
class RetentionRun:
    run_id: str
    status: str  # active | complete | failed
    shortest_max_lifetime: int | None
    longest_max_lifetime: int | None
    last_room_id: str | None
    rooms_done: int
    rooms_purged: int
    events_deleted: int
    events_hidden: int
    rooms_total: int
    error: str | None
    created_ts: int
    updated_ts: int | None


_RUN_COLS = ("run_id, status, shortest_max_lifetime, longest_max_lifetime, last_room_id,"
             " rooms_done, rooms_purged, events_deleted, events_hidden, rooms_total, error,"
             " created_ts, updated_ts")


def _opt_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _run(row: tuple[Any, ...]) -> RetentionRun:
    return RetentionRun(str(row[0]), str(row[1]), _opt_int(row[2]), _opt_int(row[3]),
                        row[4], int(row[5]), int(row[6]), int(row[7]), int(row[8]),
                        int(row[9]), row[10], int(row[11]), _opt_int(row[12]))


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def rooms_after(self, after_room_id: str | None,
                          limit: int) -> list[tuple[str, str | None]]:
        """Up to ``limit`` rooms with id above ``after_room_id``, in id order, each with
        the id of its current ``m.room.retention`` event (None: none set). The event is
        read through the event store, which opens content sealed at rest."""
        rows = await self._db.query(
            "retention_rooms_after",
            "SELECT r.room_id, c.event_id FROM rooms r"
            " LEFT JOIN current_state c ON c.room_id = r.room_id AND c.type = ?"
            "  AND c.state_key = ?"
            " WHERE r.room_id > ? ORDER BY r.room_id LIMIT ?",
            RETENTION_TYPE, "", after_room_id or "", limit)
        return [(str(room_id), event_id) for room_id, event_id in rows]

    async def count_rooms(self) -> int:
        row = await self._db.query_one("retention_count_rooms", "SELECT COUNT(*) FROM rooms")
        return int(row[0]) if row else 0

    # -- runs ----------------------------------------------------------------------------

    async def create_run(self, run_id: str, shortest: int | None, longest: int | None,
                         rooms_total: int, now_ms: int) -> None:
        await self._db.execute(
            "retention_run_create",
            "INSERT INTO retention_runs (run_id, status, shortest_max_lifetime,"
            " longest_max_lifetime, rooms_total, created_ts, updated_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            run_id, "active", shortest, longest, rooms_total, now_ms, now_ms)

    async def add_progress(self, run_id: str, last_room_id: str, rooms: int, purged: int,
                           deleted: int, hidden: int, now_ms: int) -> None:
        """Advance a run's cursor past ``last_room_id`` with the counters of the rooms
        just done (one statement: cursor and counters move together)."""
        await self._db.execute(
            "retention_run_progress",
            "UPDATE retention_runs SET last_room_id = ?, rooms_done = rooms_done + ?,"
            " rooms_purged = rooms_purged + ?, events_deleted = events_deleted + ?,"
            " events_hidden = events_hidden + ?, updated_ts = ? WHERE run_id = ?",
            last_room_id, rooms, purged, deleted, hidden, now_ms, run_id)

    async def finish_run(self, run_id: str, status: str, error: str | None,
                         now_ms: int) -> None:
        await self._db.execute(
            "retention_run_finish",
            "UPDATE retention_runs SET status = ?, error = ?, updated_ts = ? WHERE run_id = ?",
            status, error, now_ms, run_id)

    async def get_run(self, run_id: str) -> RetentionRun | None:
        row = await self._db.query_one(
            "retention_run_get", f"SELECT {_RUN_COLS} FROM retention_runs WHERE run_id = ?",
            run_id)
        return _run(row) if row else None

    async def list_runs(self, limit: int, before_ts: int | None) -> list[RetentionRun]:
        """Newest first; ``before_ts``: only runs created strictly before it."""
        if before_ts is None:
            rows = await self._db.query(
                "retention_run_list", f"SELECT {_RUN_COLS} FROM retention_runs"
                " ORDER BY created_ts DESC, run_id LIMIT ?", limit)
        else:
            rows = await self._db.query(
                "retention_run_list_before", f"SELECT {_RUN_COLS} FROM retention_runs"
                " WHERE created_ts < ? ORDER BY created_ts DESC, run_id LIMIT ?",
                before_ts, limit)
        return [_run(r) for r in rows]

    async def active_runs(self) -> list[RetentionRun]:
        rows = await self._db.query(
            "retention_run_active", f"SELECT {_RUN_COLS} FROM retention_runs"
            " WHERE status = ? ORDER BY created_ts", "active")
        return [_run(r) for r in rows]

    async def delete_finished_before(self, ts_ms: int) -> int:
        return await self._db.execute(
            "retention_run_expire",
            "DELETE FROM retention_runs WHERE status <> ? AND updated_ts < ?", "active", ts_ms)
