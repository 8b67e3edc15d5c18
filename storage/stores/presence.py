"""The ``presence`` table: each local user's last notified presence, positioned on the
``presence`` stream so /sync can ask whose presence changed after a position."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.database import Database, Txn
from storage.stores.room_members import shares_a_room

_CHUNK = 200


@dataclass(frozen=True)
class PresenceRecord:
    user_id: str
    state: str  # online | unavailable | offline
    status_msg: str | None
    last_active_ts: int
    last_sync_ts: int
    currently_active: bool
    stream_id: int = 0


_COLS = "user_id, state, status_msg, last_active_ts, last_sync_ts, currently_active, stream_id"
_P_COLS = ", ".join("p." + c for c in _COLS.split(", "))


def _row(r: Sequence) -> PresenceRecord:
    return PresenceRecord(r[0], r[1], r[2], int(r[3]), int(r[4]), bool(r[5]), int(r[6]))


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def allocate_stream_id(self) -> int:
        return await self._db.run("next_presence_stream", lambda txn: txn.next_stream_id("presence"))

    async def max_stream_id(self) -> int:
        row = await self._db.query_one("max_presence", "SELECT MAX(stream_id) FROM presence")
        return int(row[0]) if row and row[0] is not None else 0

    async def store(self, rec: PresenceRecord) -> None:
        """Write ``rec`` unless a write at a later position already did (two updates of
        one user may commit out of order)."""

        def _do(txn: Txn) -> None:
            row = txn.query_one("SELECT stream_id FROM presence WHERE user_id = ?", (rec.user_id,))
            if row is not None and int(row[0]) > rec.stream_id:
                return
            txn.execute(
                f"INSERT INTO presence ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " last_sync_ts = excluded.last_sync_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id",
                (rec.user_id, rec.state, rec.status_msg, rec.last_active_ts, rec.last_sync_ts,
                 rec.currently_active, rec.stream_id),
            )

        await self._db.run("store_presence", _do)

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, PresenceRecord]:
        out: dict[str, PresenceRecord] = {}
        ids = list(dict.fromkeys(user_ids))
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "get_presence", f"SELECT {_COLS} FROM presence WHERE user_id IN ({marks})", *chunk)
            out.update((r[0], _row(r)) for r in rows)
        return out

    async def visible_changes(self, viewer: str, since: int, upto: int | None = None,
                              limit: int | None = None) -> list[PresenceRecord]:
        """Presence written at a position in (since, upto] of ``viewer`` and of everyone
        joined to a room ``viewer`` is joined to, in stream order. One query: the set
        of people sharing a room can be large, the window of changes usually is not, so
        each change in the window is checked for a shared room (``shares_a_room``)."""
        bound = " AND p.stream_id <= ?" if upto is not None else ""
        rows = await self._db.query(
            "presence_visible_changes",
            f"SELECT {_P_COLS} FROM presence p"
            f" WHERE p.stream_id > ?{bound}"
            f" AND (p.user_id = ? OR {shares_a_room('p.user_id')})"
            " ORDER BY p.stream_id" + (f" LIMIT {int(limit)}" if limit else ""),
            since, *(() if upto is None else (upto,)), viewer, viewer)
        return [_row(r) for r in rows]

    async def room_member_changes(self, room_id: str, since: int, upto: int, limit: int
                                  ) -> list[PresenceRecord]:
        """Presence written at a position in (since, upto] of the users currently joined
        to ``room_id``, in stream order: a peeked room's members (legacy /events). At
        most ``limit`` rows, the latest ones (presence is a current state: an older
        change of a busy room is the one worth dropping)."""
        rows = await self._db.query(
            "presence_room_member_changes",
            f"SELECT {_P_COLS} FROM presence p"
            " WHERE p.stream_id > ? AND p.stream_id <= ? AND p.user_id IN ("
            " SELECT m.user_id FROM local_current_membership m"
            " WHERE m.room_id = ? AND m.membership = 'join')"
            " ORDER BY p.stream_id DESC LIMIT ?",
            since, upto, room_id, max(0, int(limit)))
        return [_row(r) for r in reversed(rows)]

    async def not_offline(self) -> list[PresenceRecord]:
        """Everyone not offline: their states must time out even if they never return."""
        rows = await self._db.query(
            "presence_not_offline", f"SELECT {_COLS} FROM presence WHERE state <> 'offline'")
        return [_row(r) for r in rows]
