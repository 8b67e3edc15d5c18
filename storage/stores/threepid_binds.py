"""The ``threepid_binds`` table: which identity server a user bound a 3PID to through
this homeserver, so that unbinding (and deactivation) knows where to go. No other
3PID data is kept."""

from __future__ import annotations

from storage.database import Database


class ThreepidBindStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_bind(self, user_id: str, medium: str, address: str, id_server: str) -> None:
        await self._db.execute(
            "add_threepid_bind",
            "INSERT INTO threepid_binds (user_id, medium, address, id_server) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, medium, address, id_server) DO NOTHING",
            user_id, medium, address, id_server,
        )

    async def servers_for(self, user_id: str, medium: str, address: str) -> list[str]:
        rows = await self._db.query(
            "get_threepid_bind_servers",
            "SELECT id_server FROM threepid_binds WHERE user_id = ? AND medium = ? AND address = ?"
            " ORDER BY id_server",
            user_id, medium, address,
        )
        return [r[0] for r in rows]

    async def binds_of_user(self, user_id: str) -> list[tuple[str, str, str]]:
        """(medium, address, id_server) of every recorded bind of ``user_id``."""
        rows = await self._db.query(
            "get_threepid_binds_of_user",
            "SELECT medium, address, id_server FROM threepid_binds WHERE user_id = ?"
            " ORDER BY medium, address, id_server",
            user_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def remove_bind(self, user_id: str, medium: str, address: str, id_server: str) -> None:
        await self._db.execute(
            "remove_threepid_bind",
            "DELETE FROM threepid_binds WHERE user_id = ? AND medium = ? AND address = ?"
            " AND id_server = ?",
            user_id, medium, address, id_server,
        )
