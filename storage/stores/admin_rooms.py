"""The rooms admin API's SQL: the room list and details (metadata only), blocked rooms
and aliases, room shutdown job rows, and deleting a whole room (the purge step of a
shutdown).

What the handlers do with these is in :mod:`homeserver.handlers.admin_rooms` and
:mod:`homeserver.handlers.room_shutdown`. Every read is bounded; the room purge works
in batches of events, each its own short transaction, so it never holds the database
(on SQLite, its only connection) for long.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Txn
from storage.stores.event_cache import bump_epoch
from storage.stores.room_directory import escape_like

_CHUNK = 200
ENCRYPTION = "m.room.encryption"
CREATE = "m.room.create"

# order_by (Synapse's names) -> column of the listing (named in _LIST_COLS; the listing
# is ordered as a subquery, since PostgreSQL cannot use output names in expressions).
ORDER_COLUMNS: dict[str, str] = {
    "name": "name",
    "canonical_alias": "canonical_alias",
    "joined_members": "joined_members",
    "joined_local_members": "joined_local_members",
    "version": "room_version",
    "creator": "creator",
    "encryption": "encrypted",
    "public": "is_public",
    "join_rules": "join_rules",
    "guest_access": "guest_access",
    "history_visibility": "history_visibility",
    "state_events": "state_events",
}
_NULLABLE = {"name", "canonical_alias", "encryption", "join_rules", "guest_access",
             "history_visibility"}

_LIST_COLS = (
    "r.room_id, s.name, s.canonical_alias, COALESCE(s.joined_members, 0) AS joined_members,"
    " (SELECT COUNT(*) FROM local_current_membership l"
    "   WHERE l.room_id = r.room_id AND l.membership = 'join'"
    "   AND l.user_id LIKE ? ESCAPE '\\') AS joined_local_members,"
    " r.room_version, r.creator,"
    " (SELECT e.event_id FROM current_state e WHERE e.room_id = r.room_id"
    f"   AND e.type = '{ENCRYPTION}' AND e.state_key = '') AS encrypted,"
    " r.is_public, s.join_rules, s.guest_access, s.history_visibility,"
    " (SELECT COUNT(*) FROM current_state c WHERE c.room_id = r.room_id) AS state_events,"
    " s.room_type, s.topic, s.avatar, r.created_ts,"
    " (SELECT c.event_id FROM current_state c WHERE c.room_id = r.room_id"
    f"   AND c.type = '{CREATE}' AND c.state_key = '') AS create_event_id"
)
_FROM = " FROM rooms r LEFT JOIN room_stats_state s ON s.room_id = r.room_id"


@dataclass(frozen=True)
class RoomListRow:
    """What the room list shows of one room (no message content; the name, topic and
    aliases are room metadata every member and the directory see)."""

    room_id: str
    name: str | None
    canonical_alias: str | None
    joined_members: int
    joined_local_members: int
    version: str
    creator: str
    encryption_event_id: str | None  # its content (the algorithm) is read by the handler
    public: bool
    join_rules: str | None
    guest_access: str | None
    history_visibility: str | None
    state_events: int
    room_type: str | None
    topic: str | None
    avatar: str | None
    created_ts: int
    create_event_id: str | None


@dataclass(frozen=True)
class StateMeta:
    """One current-state entry, without its content."""

    type: str
    state_key: str
    event_id: str
    sender: str
    origin_server_ts: int


@dataclass(frozen=True)
class ShutdownJob:
    delete_id: str
    room_id: str
    requested_by: str
    params: dict[str, Any]
    status: str  # scheduled | shutting_down | purging | complete | failed
    result: dict[str, Any]
    error: str | None
    created_ts: int
    updated_ts: int


@dataclass(frozen=True)
class RoomPurgeBatch:
    """One batch of a whole-room purge; ``events`` 0 means no event is left."""

    events: int
    extra: dict[str, int] = field(default_factory=dict)


def _list_row(r: Sequence[Any]) -> RoomListRow:
    return RoomListRow(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], r[7], bool(r[8]),
                       r[9], r[10], r[11], int(r[12]), r[13], r[14], r[15], int(r[16]), r[17])


_JOB_COLS = ("delete_id, room_id, requested_by, params, status, result, error, created_ts,"
             " updated_ts")


def _job(r: Sequence[Any]) -> ShutdownJob:
    return ShutdownJob(r[0], r[1], r[2], json.loads(r[3]), r[4], json.loads(r[5]), r[6],
                       int(r[7]), int(r[8]))


def _marks(chunk: Sequence[Any]) -> str:
    return ",".join("?" for _ in chunk)


@dataclass(frozen=True)
class RoomFilter:
    """Synapse's list filters: ``search`` a substring of the name or canonical alias
    (case folded) or the room id exactly; ``public`` published or not; ``empty``
    without or with joined members (None: either)."""

    search: str | None = None
    public: bool | None = None
    empty: bool | None = None


def _where(f: RoomFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.search:
        pattern = f"%{escape_like(f.search.lower())}%"
        clauses.append("(LOWER(s.name) LIKE ? ESCAPE '\\' OR LOWER(s.canonical_alias) LIKE ?"
                       " ESCAPE '\\' OR r.room_id = ?)")
        args += [pattern, pattern, f.search]
    if f.public is not None:
        clauses.append("r.is_public = ?")
        args.append(f.public)
    if f.empty is not None:
        clauses.append("COALESCE(s.joined_members, 0) " + ("= 0" if f.empty else "> 0"))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


# Tables holding rows keyed by a room's event ids (deleted per batch of events).
_BY_EVENT = ("event_relations", "event_search", "event_push_actions", "event_state_groups",
             "redactions", "room_memberships")
# Tables keyed by room id (deleted once the room's events are gone).
_BY_ROOM = ("current_state", "room_forward_extremities", "event_txn_ids",
            "local_current_membership", "room_aliases", "room_stats_state", "receipts",
            "appservice_room_list", "server_notice_rooms",
            "partial_state_rooms", "partial_state_room_servers", "partial_state_resynced")


def _purge_room_batch(txn: Txn, room_id: str, limit: int) -> int:
    rows = txn.query("SELECT event_id FROM events WHERE room_id = ? ORDER BY stream_ordering"
                     " LIMIT ?", (room_id, limit))
    ids = [r[0] for r in rows]
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        m = _marks(chunk)
        for table in _BY_EVENT:
            txn.execute(f"DELETE FROM {table} WHERE event_id IN ({m})", chunk)
        txn.execute(f"DELETE FROM redactions WHERE redacts IN ({m})", chunk)
        txn.execute(f"DELETE FROM events WHERE event_id IN ({m})", chunk)
    if ids:
        bump_epoch(txn)  # no process's event cache serves them any more
    return len(ids)


def _purge_room_rest(txn: Txn, room_id: str) -> None:
    """Everything of the room that is not keyed by an event: state groups, per-room
    tables, room account data (tags, read markers) and the room row itself."""
    txn.execute("DELETE FROM state_group_entries WHERE state_group IN"
                " (SELECT id FROM state_groups WHERE room_id = ?)", (room_id,))
    txn.execute("DELETE FROM state_groups WHERE room_id = ?", (room_id,))
    for table in _BY_ROOM:
        txn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
    txn.execute("DELETE FROM account_data WHERE room_id = ?", (room_id,))
    txn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))


class AdminRoomStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self._db = db
        self._local = f"%:{escape_like(server_name)}"  # LIKE pattern of local user ids

    # -- listing and details -------------------------------------------------------------

    async def list_rooms(self, flt: RoomFilter, order_by: str, forwards: bool,
                         offset: int, limit: int) -> tuple[list[RoomListRow], int]:
        """A page of rooms in Synapse's order, and the total matching the filter."""
        where, args = _where(flt)
        direction = "ASC" if forwards else "DESC"
        column = ORDER_COLUMNS[order_by]
        nulls = f"CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, " \
            if order_by in _NULLABLE else ""
        sql = (f"SELECT * FROM (SELECT {_LIST_COLS}{_FROM}{where}) x"
               f" ORDER BY {nulls}{column} {direction}, room_id {direction} LIMIT ? OFFSET ?")

        def _list(txn: Txn) -> tuple[list[RoomListRow], int]:
            rows = txn.query(sql, [self._local, *args, limit, offset])
            total = txn.query_one(f"SELECT COUNT(*){_FROM}{where}", args)
            return [_list_row(r) for r in rows], int(total[0]) if total else 0

        return await self._db.run("admin_rooms_list", _list)

    async def get_room(self, room_id: str) -> RoomListRow | None:
        row = await self._db.query_one(
            "admin_rooms_get", f"SELECT {_LIST_COLS}{_FROM} WHERE r.room_id = ?", self._local, room_id)
        return _list_row(row) if row else None

    async def joined_members(self, room_id: str, limit: int) -> list[str]:
        """Joined members of every server, from current state (user ids only)."""
        rows = await self._db.query(
            "admin_rooms_members",
            "SELECT rm.user_id FROM current_state cs"
            " JOIN room_memberships rm ON rm.event_id = cs.event_id"
            " WHERE cs.room_id = ? AND cs.type = ? AND rm.membership = ?"
            " ORDER BY rm.user_id LIMIT ?",
            room_id, "m.room.member", "join", limit)
        return [r[0] for r in rows]

    async def state_metadata(self, room_id: str, limit: int) -> list[StateMeta]:
        """The room's current state as metadata: never the events' content."""
        rows = await self._db.query(
            "admin_rooms_state",
            "SELECT cs.type, cs.state_key, cs.event_id, e.sender, e.origin_server_ts"
            " FROM current_state cs JOIN events e ON e.event_id = cs.event_id"
            " WHERE cs.room_id = ? ORDER BY cs.type, cs.state_key LIMIT ?",
            room_id, limit)
        return [StateMeta(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]

    # -- blocking ------------------------------------------------------------------------

    async def block_room(self, room_id: str, user_id: str, now_ms: int) -> None:
        def _block(txn: Txn) -> None:
            if txn.query_one("SELECT 1 FROM blocked_rooms WHERE room_id = ?", (room_id,)):
                return
            txn.execute("INSERT INTO blocked_rooms (room_id, blocked_by, created_ts)"
                        " VALUES (?, ?, ?)", (room_id, user_id, now_ms))

        await self._db.run("admin_rooms_block", _block)

    async def unblock_room(self, room_id: str) -> bool:
        return bool(await self._db.execute(
            "admin_rooms_unblock", "DELETE FROM blocked_rooms WHERE room_id = ?", room_id))

    async def room_blocked_by(self, room_id: str) -> str | None:
        """Who blocked the room; None if it is not blocked."""
        row = await self._db.query_one(
            "admin_rooms_blocked", "SELECT blocked_by FROM blocked_rooms WHERE room_id = ?",
            room_id)
        return row[0] if row else None

    async def block_alias(self, alias: str, room_id: str, delete_id: str | None,
                          now_ms: int) -> None:
        def _block(txn: Txn) -> None:
            if txn.query_one("SELECT 1 FROM blocked_room_aliases WHERE room_alias = ?",
                             (alias,)):
                return
            txn.execute("INSERT INTO blocked_room_aliases (room_alias, room_id, delete_id,"
                        " created_ts) VALUES (?, ?, ?, ?)", (alias, room_id, delete_id, now_ms))

        await self._db.run("admin_rooms_block_alias", _block)

    async def is_alias_blocked(self, alias: str) -> bool:
        return await self._db.query_one(
            "admin_rooms_alias_blocked",
            "SELECT 1 FROM blocked_room_aliases WHERE room_alias = ?", alias) is not None

    # -- shutdown jobs -------------------------------------------------------------------

    async def create_job(self, delete_id: str, room_id: str, requested_by: str,
                         params: dict[str, Any], result: dict[str, Any], now_ms: int) -> None:
        await self._db.execute(
            "room_shutdown_create",
            f"INSERT INTO room_shutdown_jobs ({_JOB_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            delete_id, room_id, requested_by, json.dumps(params), "scheduled",
            json.dumps(result), None, now_ms, now_ms)

    async def update_job(self, delete_id: str, status: str, result: dict[str, Any],
                         error: str | None, now_ms: int) -> None:
        await self._db.execute(
            "room_shutdown_update",
            "UPDATE room_shutdown_jobs SET status = ?, result = ?, error = ?, updated_ts = ?"
            " WHERE delete_id = ?",
            status, json.dumps(result), error, now_ms, delete_id)

    async def get_job(self, delete_id: str) -> ShutdownJob | None:
        row = await self._db.query_one(
            "room_shutdown_get", f"SELECT {_JOB_COLS} FROM room_shutdown_jobs WHERE delete_id = ?",
            delete_id)
        return _job(row) if row else None

    async def jobs_for_room(self, room_id: str, limit: int) -> list[ShutdownJob]:
        rows = await self._db.query(
            "room_shutdown_for_room",
            f"SELECT {_JOB_COLS} FROM room_shutdown_jobs WHERE room_id = ?"
            " ORDER BY created_ts DESC, delete_id LIMIT ?", room_id, limit)
        return [_job(r) for r in rows]

    async def unfinished_jobs(self) -> list[ShutdownJob]:
        """Jobs to resume at start-up, oldest first."""
        rows = await self._db.query(
            "room_shutdown_unfinished",
            f"SELECT {_JOB_COLS} FROM room_shutdown_jobs WHERE status IN (?, ?, ?)"
            " ORDER BY created_ts, delete_id", "scheduled", "shutting_down", "purging")
        return [_job(r) for r in rows]

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[ShutdownJob]:
        """Newest first, created strictly before ``before_ts`` when given."""
        where = " WHERE created_ts < ?" if before_ts is not None else ""
        args: list[Any] = [before_ts] if before_ts is not None else []
        rows = await self._db.query(
            "room_shutdown_list",
            f"SELECT {_JOB_COLS} FROM room_shutdown_jobs{where}"
            " ORDER BY created_ts DESC, delete_id LIMIT ?", *args, limit)
        return [_job(r) for r in rows]

    # -- the room purge ------------------------------------------------------------------

    async def purge_room_batch(self, room_id: str, limit: int) -> int:
        """Delete up to ``limit`` of the room's events with every row derived from them;
        returns how many (0: none left)."""
        return await self._db.run("room_purge_batch", _purge_room_batch, room_id, limit)

    async def purge_room_rest(self, room_id: str) -> None:
        """After the events: the room's state groups, per-room rows and the room row."""
        await self._db.run("room_purge_rest", _purge_room_rest, room_id)

    async def local_members(self, room_id: str) -> list[tuple[str, str]]:
        """(user_id, membership) of local users with any membership but leave."""
        rows = await self._db.query(
            "admin_rooms_local_members",
            "SELECT user_id, membership FROM local_current_membership"
            " WHERE room_id = ? AND membership <> ? AND user_id LIKE ? ESCAPE '\\'"
            " ORDER BY user_id", room_id, "leave", self._local)
        return [(r[0], r[1]) for r in rows]

    async def count_room_events(self, room_id: str) -> int:
        row = await self._db.query_one(
            "room_purge_count", "SELECT COUNT(*) FROM events WHERE room_id = ?", room_id)
        return int(row[0]) if row else 0
