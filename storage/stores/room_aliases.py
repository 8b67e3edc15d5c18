"""The ``room_aliases`` table: local aliases (#name:server) and their rooms."""

from __future__ import annotations

from storage.database import Database


class RoomAliasStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_alias(self, alias: str, room_id: str, creator: str, now_ms: int) -> bool:
        """False if the alias exists already."""
        try:
            await self._db.execute(
                "create_alias",
                "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts)"
                " VALUES (?, ?, ?, ?)",
                alias, room_id, creator, now_ms,
            )
        except Exception as e:
            if self._db.is_integrity_error(e):
                return False
            raise
        return True

    async def get_alias(self, alias: str) -> tuple[str, str] | None:
        """(room_id, creator) or None."""
        row = await self._db.query_one(
            "get_alias", "SELECT room_id, creator FROM room_aliases WHERE room_alias = ?", alias
        )
        return (row[0], row[1]) if row else None

    async def delete_alias(self, alias: str) -> bool:
        count = await self._db.execute(
            "delete_alias", "DELETE FROM room_aliases WHERE room_alias = ?", alias
        )
        return count > 0

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self._db.query(
            "aliases_for_room",
            "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts", room_id,
        )
        return [r[0] for r in rows]

    async def rooms_for_aliases(self, aliases: list[str]) -> dict[str, str]:
        """{alias: room_id} for those of ``aliases`` that exist (one query per 500)."""
        out: dict[str, str] = {}
        for i in range(0, len(aliases), 500):
            chunk = aliases[i:i + 500]
            rows = await self._db.query(
                "rooms_for_aliases",
                "SELECT room_alias, room_id FROM room_aliases WHERE room_alias IN"
                f" ({', '.join('?' for _ in chunk)})",
                *chunk,
            )
            out.update({r[0]: r[1] for r in rows})
        return out
