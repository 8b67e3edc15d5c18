"""``shadow_banned_users`` (issue 15): who is shadow-banned, by whom and since when."""

from __future__ import annotations

from storage.database import Database


class ShadowBanStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def is_banned(self, user_id: str) -> bool:
        row = await self._db.query_one(
            "is_shadow_banned", "SELECT 1 FROM shadow_banned_users WHERE user_id = ?", user_id)
        return row is not None

    async def ban(self, user_id: str, by: str, now_ms: int) -> None:
        await self._db.execute(
            "shadow_ban",
            "INSERT INTO shadow_banned_users (user_id, banned_by, banned_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO NOTHING", user_id, by, now_ms)

    async def unban(self, user_id: str) -> bool:
        n = await self._db.execute(
            "shadow_unban", "DELETE FROM shadow_banned_users WHERE user_id = ?", user_id)
        return n == 1
