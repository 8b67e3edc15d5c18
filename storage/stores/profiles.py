"""Profiles of local users.

``profiles`` holds the display name and avatar URL (read on every membership event);
``profile_fields`` holds every other field (spec v1.16 custom fields, ``m.tz`` too),
one row per key, the value as JSON text. With ``secrets.encrypt_profiles`` every value is
stored sealed (``self.codec``, homeserver/crypto/content.py) and opened on every read.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homeserver.crypto.content import (
    PLAIN_CODEC,
    FieldCodec,
    profile_field_location,
    profile_location,
)
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


def _fields_txn(txn: Txn, user_id: str, codec: FieldCodec) -> dict[str, Any]:
    rows = txn.query("SELECT field_name, value FROM profile_fields WHERE user_id = ?", (user_id,))
    return {name: json.loads(codec.open(value, profile_field_location(user_id, name)))
            for name, value in rows}


def open_profile_columns(codec: FieldCodec, user_id: str, displayname: str | None,
                         avatar_url: str | None) -> tuple[str | None, str | None]:
    """The two ``profiles`` columns as stored -> plaintext (AtRestError if refused)."""
    return (codec.open_optional(displayname, profile_location(user_id, "displayname")),
            codec.open_optional(avatar_url, profile_location(user_id, "avatar_url")))


def seal_column(codec: FieldCodec, user_id: str, column: str, value: str | None) -> str | None:
    """A ``profiles`` column value as it is stored (sealed when profiles are encrypted)."""
    return None if value is None else codec.seal(value, profile_location(user_id, column))


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Encryption at rest of profile fields (secrets.encrypt_profiles), set at wiring.
        self.codec: FieldCodec = PLAIN_CODEC

    async def _profile(self, user_id: str, row: Any) -> Profile | None:
        if row is None:
            return None
        return Profile(*await self.codec.audited(
            lambda: _async(open_profile_columns, self.codec, user_id, row[0], row[1])))

    async def get_profile(self, user_id: str) -> Profile | None:
        row = await self._db.query_one(
            "get_profile", "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?",
            user_id,
        )
        return await self._profile(user_id, row)

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
        return await self._profile(user_id, row)

    async def get_active_profile_fields(self, user_id: str) -> dict[str, Any] | None:
        """Every set field of an existing, not deactivated user (``{}`` if none), else None.

        One transaction, so the columns and the custom fields come from the same moment.
        """
        codec = self.codec

        def _get(txn: Txn) -> dict[str, Any] | None:
            row = txn.query_one(
                "SELECT p.displayname, p.avatar_url FROM profiles AS p"
                " JOIN users AS u ON u.user_id = p.user_id"
                " WHERE p.user_id = ? AND u.deactivated = ?",
                (user_id, False),
            )
            if row is None:
                return None
            return _profile_dict(*open_profile_columns(codec, user_id, row[0], row[1]),
                                 _fields_txn(txn, user_id, codec))

        return await codec.audited(lambda: self._db.run("get_active_profile_fields", _get))

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
        codec = self.codec

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
                after = _profile_dict(*open_profile_columns(codec, user_id, row[0], row[1]),
                                      _fields_txn(txn, user_id, codec))
                after[name] = value
                if not accept(after):
                    return SetFieldResult.REFUSED
            if name in _COLUMN_UPDATES:
                txn.execute(_COLUMN_UPDATES[name], (seal_column(codec, user_id, name, value),
                                                    user_id))
            elif value is None:
                txn.execute("DELETE FROM profile_fields WHERE user_id = ? AND field_name = ?",
                            (user_id, name))
            else:
                txn.execute(
                    "INSERT INTO profile_fields (user_id, field_name, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (user_id, field_name) DO UPDATE SET value = excluded.value",
                    (user_id, name,
                     codec.seal(encode_value(value), profile_field_location(user_id, name))),
                )
            return SetFieldResult.DONE

        return await codec.audited(lambda: self._db.run("set_profile_field", _set))

    async def set_displayname(self, user_id: str, displayname: str | None) -> bool:
        """Returns False if the user has no profile row. No size check: for registration."""
        count = await self._db.execute(
            "set_displayname", "UPDATE profiles SET displayname = ? WHERE user_id = ?",
            seal_column(self.codec, user_id, "displayname", displayname), user_id,
        )
        return count > 0

    async def set_avatar_url(self, user_id: str, avatar_url: str | None) -> bool:
        """Returns False if the user has no profile row. No size check."""
        count = await self._db.execute(
            "set_avatar_url", "UPDATE profiles SET avatar_url = ? WHERE user_id = ?",
            seal_column(self.codec, user_id, "avatar_url", avatar_url), user_id,
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


    # -- encryption at rest (``parley keys rotate``) --------------------------------------

    async def stored_values_page(self, after: tuple[str, str], limit: int
                                 ) -> list[tuple[str, str, str]]:
        """(user id, column or custom field name, value as stored) of every set profile
        value after ``after`` = (user id, name), in that order. Column values are named
        ``displayname`` / ``avatar_url``; custom fields ``field:<name>``."""
        rows = await self._db.query(
            "stored_profile_values",
            "SELECT user_id, name, value FROM ("
            " SELECT user_id, 'displayname' AS name, displayname AS value FROM profiles"
            " WHERE displayname IS NOT NULL"
            " UNION ALL SELECT user_id, 'avatar_url', avatar_url FROM profiles"
            " WHERE avatar_url IS NOT NULL"
            " UNION ALL SELECT user_id, 'field:' || field_name, value FROM profile_fields"
            ") v WHERE user_id > ? OR (user_id = ? AND name > ?) ORDER BY user_id, name LIMIT ?",
            after[0], after[0], after[1], limit)
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def rewrite_stored_value(self, user_id: str, name: str, stored: str) -> bool:
        """Rewrite one value (as named by :meth:`stored_values_page`) in its target form,
        only if it still holds ``stored``. AtRestError (audited) if it cannot be opened."""
        codec = self.codec
        if name.startswith("field:"):
            field_name = name[len("field:"):]
            loc = profile_field_location(user_id, field_name)
            sql = "UPDATE profile_fields SET value = ? WHERE user_id = ? AND field_name = ?" \
                  " AND value = ?"
            keys: tuple[str, ...] = (user_id, field_name)
        elif name in _COLUMN_UPDATES:
            loc = profile_location(user_id, name)
            sql = f"UPDATE profiles SET {name} = ? WHERE user_id = ? AND {name} = ?"
            keys = (user_id,)
        else:
            raise ValueError(name)

        async def rewrite() -> str:
            return codec.rewrite(stored, loc)

        new = await codec.audited(rewrite)
        return await self._db.execute("rewrite_profile_value", sql, new, *keys, stored) == 1


async def _async(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as an awaitable (for FieldCodec.audited around synchronous opens)."""
    return fn(*args)
