"""The ``profiles`` table: display names and avatar URLs of local users."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_profile(self, user_id: str) -> Profile | None:
        row = await self._db.query_one(
            "get_profile", "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?",
            user_id,
        )
        return Profile(row[0], row[1]) if row else None

    async def get_active_profile(self, user_id: str) -> Profile | None:
        """The profile of a user who exists and is not deactivated, else None.

        One query, so a deactivation can never be seen half-applied.
        """
        row = await self._db.query_one(
            "get_active_profile",
            "SELECT p.displayname, p.avatar_url FROM profiles AS p"
            " JOIN users AS u ON u.user_id = p.user_id"
            " WHERE p.user_id = ? AND u.deactivated = ?",
            user_id, False,
        )
        return Profile(row[0], row[1]) if row else None

    async def set_displayname(self, user_id: str, displayname: str | None) -> bool:
        """Returns False if the user has no profile row."""
        count = await self._db.execute(
            "set_displayname", "UPDATE profiles SET displayname = ? WHERE user_id = ?",
            displayname, user_id,
        )
        return count > 0

    async def set_avatar_url(self, user_id: str, avatar_url: str | None) -> bool:
        """Returns False if the user has no profile row."""
        count = await self._db.execute(
            "set_avatar_url", "UPDATE profiles SET avatar_url = ? WHERE user_id = ?",
            avatar_url, user_id,
        )
        return count > 0

    async def clear(self, user_id: str) -> None:
        await self._db.execute(
            "clear_profile",
            "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?",
            user_id,
        )
