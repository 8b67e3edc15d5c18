"""``blocked_servers``: remote servers an admin blocked (issue 15). The config's
``federation.blocked_servers`` are merged in by the handler, not stored here."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class BlockedServer:
    server_name: str
    blocked_by: str
    blocked_ts: int
    reason: str | None


def _row(r: tuple) -> BlockedServer:  # type: ignore[type-arg]
    return BlockedServer(r[0], r[1], int(r[2]), r[3])


class BlockedServerStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def block(self, server_name: str, by: str, now_ms: int, reason: str | None) -> None:
        """Block (again: the reason and who/when are replaced)."""
        await self._db.execute(
            "block_server",
            "INSERT INTO blocked_servers (server_name, blocked_by, blocked_ts, reason)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (server_name) DO UPDATE SET"
            " blocked_by = excluded.blocked_by, blocked_ts = excluded.blocked_ts,"
            " reason = excluded.reason",
            server_name, by, now_ms, reason)

    async def unblock(self, server_name: str) -> bool:
        n = await self._db.execute(
            "unblock_server", "DELETE FROM blocked_servers WHERE server_name = ?", server_name)
        return n == 1

    async def get(self, server_name: str) -> BlockedServer | None:
        row = await self._db.query_one(
            "get_blocked_server",
            "SELECT server_name, blocked_by, blocked_ts, reason FROM blocked_servers"
            " WHERE server_name = ?", server_name)
        return _row(row) if row else None

    async def list_all(self, offset: int, limit: int) -> tuple[list[BlockedServer], int]:
        rows = await self._db.query(
            "list_blocked_servers",
            "SELECT server_name, blocked_by, blocked_ts, reason FROM blocked_servers"
            " ORDER BY server_name LIMIT ? OFFSET ?", limit, offset)
        total = await self._db.query_one("count_blocked_servers",
                                         "SELECT COUNT(*) FROM blocked_servers")
        return [_row(r) for r in rows], int(total[0]) if total else 0
