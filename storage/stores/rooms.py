"""The ``rooms`` table: one row per room this server knows."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class RoomRecord:
    room_id: str
    room_version: str
    creator: str
    is_public: bool
    created_ts: int


class RoomStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._versions: dict[str, str] = {}

    async def store_room(self, room_id: str, room_version: str, creator: str, is_public: bool,
                         now_ms: int) -> None:
        await self._db.execute(
            "store_room",
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts)"
            " VALUES (?, ?, ?, ?, ?)",
            room_id, room_version, creator, is_public, now_ms,
        )
        self._versions[room_id] = room_version

    async def get_room(self, room_id: str) -> RoomRecord | None:
        row = await self._db.query_one(
            "get_room",
            "SELECT room_id, room_version, creator, is_public, created_ts FROM rooms"
            " WHERE room_id = ?",
            room_id,
        )
        return RoomRecord(row[0], row[1], row[2], bool(row[3]), int(row[4])) if row else None

    async def get_room_version(self, room_id: str) -> str | None:
        """Cached: a room's version never changes."""
        if room_id in self._versions:
            return self._versions[room_id]
        room = await self.get_room(room_id)
        if room is None:
            return None
        self._versions[room_id] = room.room_version
        return room.room_version

    def forget_room(self, room_id: str) -> None:
        """Drop the cached version of a room whose row was deleted (a room purge)."""
        self._versions.pop(room_id, None)

    async def set_public(self, room_id: str, is_public: bool) -> bool:
        count = await self._db.execute(
            "set_room_public", "UPDATE rooms SET is_public = ? WHERE room_id = ?",
            is_public, room_id,
        )
        return count > 0

    async def public_room_ids(self) -> list[str]:
        rows = await self._db.query(
            "public_rooms", "SELECT room_id FROM rooms WHERE is_public = ? ORDER BY created_ts",
            True,
        )
        return [r[0] for r in rows]
