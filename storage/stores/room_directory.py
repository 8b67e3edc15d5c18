"""``room_stats_state``: a per-room summary of current state (name, topic, join rule,
joined member count, ...) so the published room list and the user directory's
"public room" rule are one indexed query, never a read of every room's state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

# Join rules under which a published room is listed (Synapse lists knock rooms too);
# a world-readable room is listed whatever its join rule.
LISTED_JOIN_RULES = ("public", "knock", "knock_restricted")

STATS_FIELDS = ("name", "topic", "canonical_alias", "avatar", "join_rules", "history_visibility",
                "guest_access", "room_type")
_COLS = "s.room_id, " + ", ".join(f"s.{f}" for f in STATS_FIELDS) + ", s.joined_members"

# Counted from current state, so members of every server are included.
_JOINED_COUNT = (
    "SELECT COUNT(*) FROM current_state cs JOIN room_memberships rm ON rm.event_id = cs.event_id"
    " WHERE cs.room_id = ? AND cs.type = ? AND rm.membership = ?"
)


@dataclass(frozen=True)
class RoomStats:
    room_id: str
    name: str | None
    topic: str | None
    canonical_alias: str | None
    avatar: str | None
    join_rules: str | None
    history_visibility: str | None
    guest_access: str | None
    room_type: str | None
    joined_members: int


@dataclass(frozen=True)
class PublicRoomsQuery:
    """A page request: ``bound`` is the (joined_members, room_id) of the last room seen,
    ``forwards`` the direction (forwards = fewer members)."""

    search: str | None = None  # already lowercased
    room_types: Sequence[str | None] | None = None
    bound: tuple[int, str] | None = None
    forwards: bool = True
    limit: int | None = None


def escape_like(value: str) -> str:
    """Escape LIKE wildcards; every pattern using it says ``ESCAPE '\\'``."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row(r: tuple[Any, ...]) -> RoomStats:
    return RoomStats(r[0], *r[1:9], joined_members=int(r[9]))


def _filters(q: PublicRoomsQuery) -> tuple[str, list[Any]]:
    marks = ", ".join("?" for _ in LISTED_JOIN_RULES)
    sql = (
        " FROM rooms r JOIN room_stats_state s ON s.room_id = r.room_id"
        f" WHERE r.is_public = ? AND s.joined_members > ?"
        f" AND (s.join_rules IN ({marks}) OR s.history_visibility = ?)"
    )
    args: list[Any] = [True, 0, *LISTED_JOIN_RULES, "world_readable"]
    if q.search:
        sql += " AND s.search_text LIKE ? ESCAPE '\\'"
        args.append(f"%{escape_like(q.search)}%")
    if q.room_types:
        named = [t for t in q.room_types if t is not None]
        parts = []
        if None in q.room_types:
            parts.append("s.room_type IS NULL")
        if named:
            parts.append(f"s.room_type IN ({', '.join('?' for _ in named)})")
            args.extend(named)
        sql += f" AND ({' OR '.join(parts)})"
    return sql, args


class RoomDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert_stats(self, room_id: str, fields: dict[str, str | None], search_text: str) -> None:
        """Replace a room's summary; the joined member count is recomputed in the same
        transaction."""
        values = [fields.get(f) for f in STATS_FIELDS]

        def _do(txn: Txn) -> None:
            row = txn.query_one(_JOINED_COUNT, (room_id, "m.room.member", "join"))
            joined = int(row[0]) if row else 0
            cols = ", ".join(STATS_FIELDS)
            updates = ", ".join(f"{f} = excluded.{f}" for f in (*STATS_FIELDS, "joined_members",
                                                                    "search_text"))
            txn.execute(
                f"INSERT INTO room_stats_state (room_id, {cols}, joined_members, search_text)"
                f" VALUES (?, {', '.join('?' for _ in STATS_FIELDS)}, ?, ?)"
                f" ON CONFLICT (room_id) DO UPDATE SET {updates}",
                (room_id, *values, joined, search_text),
            )

        await self._db.run("upsert_room_stats", _do)

    async def update_joined_members(self, room_id: str) -> bool:
        """Recount joined members; False if the room has no summary row yet."""
        count = await self._db.execute(
            "update_room_joined_members",
            f"UPDATE room_stats_state SET joined_members = ({_JOINED_COUNT}) WHERE room_id = ?",
            room_id, "m.room.member", "join", room_id,
        )
        return count > 0

    async def update_field(self, room_id: str, column: str, value: str | None) -> bool:
        """Set one summary column (not one search_text is built from); False if the
        room has no row yet."""
        if column not in STATS_FIELDS:
            raise ValueError(f"unknown room_stats_state column {column!r}")
        count = await self._db.execute(
            "update_room_stats_field",
            f"UPDATE room_stats_state SET {column} = ? WHERE room_id = ?", value, room_id,
        )
        return count > 0

    async def rooms_without_stats(self, limit: int = 1000) -> list[str]:
        rows = await self._db.query(
            "rooms_without_stats",
            "SELECT r.room_id FROM rooms r WHERE NOT EXISTS"
            " (SELECT 1 FROM room_stats_state s WHERE s.room_id = r.room_id)"
            " ORDER BY r.room_id LIMIT ?",
            limit,
        )
        return [r[0] for r in rows]

    async def get_stats(self, room_id: str) -> RoomStats | None:
        row = await self._db.query_one(
            "get_room_stats", f"SELECT {_COLS} FROM room_stats_state s WHERE s.room_id = ?",
            room_id,
        )
        return _row(row) if row else None

    async def public_rooms(self, q: PublicRoomsQuery) -> list[RoomStats]:
        """Published, listable rooms, most joined members first then by room id; with a
        bound, the rooms strictly after it in the requested direction (returned in
        that direction's order)."""
        sql, args = _filters(q)
        if q.bound is not None:
            members, room_id = q.bound
            if q.forwards:
                sql += " AND (s.joined_members < ? OR (s.joined_members = ? AND s.room_id > ?))"
            else:
                sql += " AND (s.joined_members > ? OR (s.joined_members = ? AND s.room_id < ?))"
            args += [members, members, room_id]
        order = "s.joined_members DESC, s.room_id ASC" if q.forwards else (
            "s.joined_members ASC, s.room_id DESC")
        sql = f"SELECT {_COLS}{sql} ORDER BY {order}"
        if q.limit is not None:
            sql += " LIMIT ?"
            args.append(q.limit)
        rows = await self._db.query("public_rooms_page", sql, *args)
        return [_row(r) for r in rows]

    async def count_public_rooms(self, q: PublicRoomsQuery) -> int:
        sql, args = _filters(q)
        row = await self._db.query_one("count_public_rooms", f"SELECT COUNT(*){sql}", *args)
        return int(row[0]) if row else 0
