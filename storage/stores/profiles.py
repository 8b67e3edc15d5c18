"""Profiles of local users.

``profiles`` holds the display name and avatar URL (read on every membership event);
``profile_fields`` holds every other field (spec v1.16 custom fields, ``m.tz`` too),
one row per key, the value as JSON text.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

# The two fields kept as columns of ``profiles``; all others live in ``profile_fields``.
_COLUMN_UPDATES = {
    "displayname": "UPDATE profiles SET displayname = ? WHERE user_id = ?",
    "avatar_url": "UPDATE profiles SET avatar_url = ? WHERE user_id = ?",
}
COLUMN_FIELDS = tuple(_COLUMN_UPDATES)


@dataclass(frozen=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


class SetFieldResult(enum.Enum):
    DONE = "done"
    NO_PROFILE = "no_profile"  # the user has no ``profiles`` row
    REFUSED = "refused"  # the ``accept`` check said no; nothing was written


def encode_value(value: Any) -> str:
    """JSON text of a field value; NaN/infinity (e.g. from ``1e400``) are refused."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _profile_dict(displayname: str | None, avatar_url: str | None,
                  fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    if displayname is not None:
        out["displayname"] = displayname
    if avatar_url is not None:
        out["avatar_url"] = avatar_url
    return out


def _fields_txn(txn: Txn, user_id: str) -> dict[str, Any]:
    rows = txn.query("SELECT field_name, value FROM profile_fields WHERE user_id = ?", (user_id,))
    return {name: json.loads(value) for name, value in rows}


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

    async def get_active_profile_fields(self, user_id: str) -> dict[str, Any] | None:
        """Every set field of an existing, not deactivated user (``{}`` if none), else None.

        One transaction, so the columns and the custom fields come from the same moment.
        """

        def _get(txn: Txn) -> dict[str, Any] | None:
            row = txn.query_one(
                "SELECT p.displayname, p.avatar_url FROM profiles AS p"
                " JOIN users AS u ON u.user_id = p.user_id"
                " WHERE p.user_id = ? AND u.deactivated = ?",
                (user_id, False),
            )
            if row is None:
                return None
            return _profile_dict(row[0], row[1], _fields_txn(txn, user_id))

        return await self._db.run("get_active_profile_fields", _get)

    async def set_field(
        self,
        user_id: str,
        name: str,
        value: Any,
        accept: Callable[[dict[str, Any]], bool] = lambda _profile: True,
    ) -> SetFieldResult:
        """Set one field (``value`` None: clear a column field / delete a custom field).

        ``accept`` sees the whole profile as it would be after a set (not a removal,
        which only shrinks it) and may refuse it: this is how the size limit is
        enforced. It runs under the ``profiles`` row lock, so two concurrent writes
        cannot both pass the check against the same old profile.
        """

        def _set(txn: Txn) -> SetFieldResult:
            # A no-op UPDATE takes the row lock (PostgreSQL) / write lock (SQLite) first.
            txn.execute("UPDATE profiles SET displayname = displayname WHERE user_id = ?",
                        (user_id,))
            if txn.rowcount < 1:
                return SetFieldResult.NO_PROFILE
            if value is not None:
                row = txn.query_one(
                    "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", (user_id,)
                )
                assert row is not None
                after = _profile_dict(row[0], row[1], _fields_txn(txn, user_id))
                after[name] = value
                if not accept(after):
                    return SetFieldResult.REFUSED
            if name in _COLUMN_UPDATES:
                txn.execute(_COLUMN_UPDATES[name], (value, user_id))
            elif value is None:
                txn.execute("DELETE FROM profile_fields WHERE user_id = ? AND field_name = ?",
                            (user_id, name))
            else:
                txn.execute(
                    "INSERT INTO profile_fields (user_id, field_name, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (user_id, field_name) DO UPDATE SET value = excluded.value",
                    (user_id, name, encode_value(value)),
                )
            return SetFieldResult.DONE

        return await self._db.run("set_profile_field", _set)

    async def set_displayname(self, user_id: str, displayname: str | None) -> bool:
        """Returns False if the user has no profile row. No size check: for registration."""
        count = await self._db.execute(
            "set_displayname", "UPDATE profiles SET displayname = ? WHERE user_id = ?",
            displayname, user_id,
        )
        return count > 0

    async def set_avatar_url(self, user_id: str, avatar_url: str | None) -> bool:
        """Returns False if the user has no profile row. No size check."""
        count = await self._db.execute(
            "set_avatar_url", "UPDATE profiles SET avatar_url = ? WHERE user_id = ?",
            avatar_url, user_id,
        )
        return count > 0

    async def clear(self, user_id: str) -> None:
        """Erase every field (deactivation with ``erase``), in one transaction."""

        def _clear(txn: Txn) -> None:
            txn.execute(
                "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?",
                (user_id,),
            )
            txn.execute("DELETE FROM profile_fields WHERE user_id = ?", (user_id,))

        await self._db.run("clear_profile", _clear)
