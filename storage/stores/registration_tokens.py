"""The ``registration_tokens`` table: admin-managed tokens that gate sign-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from storage.database import Database, Txn

# Columns an admin may change; the names are interpolated into SQL, so only these.
UPDATABLE_FIELDS = frozenset({"uses_allowed", "expiry_time"})


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def usable(self, now_ms: int) -> bool:
        if self.expiry_time is not None and self.expiry_time <= now_ms:
            return False
        if self.uses_allowed is not None and self.pending + self.completed >= self.uses_allowed:
            return False
        return True

    def to_json(self) -> dict:
        return {
            "token": self.token,
            "uses_allowed": self.uses_allowed,
            "pending": self.pending,
            "completed": self.completed,
            "expiry_time": self.expiry_time,
        }


_COLS = "token, uses_allowed, pending, completed, expiry_time"


def _row(r: tuple) -> RegistrationToken:
    return RegistrationToken(r[0], r[1], int(r[2]), int(r[3]), r[4])


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, token: str, uses_allowed: int | None, expiry_time: int | None, now_ms: int
    ) -> bool:
        """Insert a token; False if it already exists."""
        try:
            await self._db.execute(
                "create_registration_token",
                "INSERT INTO registration_tokens (token, uses_allowed, expiry_time, created_ts)"
                " VALUES (?, ?, ?, ?)",
                token, uses_allowed, expiry_time, now_ms,
            )
        except Exception as e:
            if self._db.is_integrity_error(e):
                return False
            raise
        return True

    async def get(self, token: str) -> RegistrationToken | None:
        row = await self._db.query_one(
            "get_registration_token",
            f"SELECT {_COLS} FROM registration_tokens WHERE token = ?",
            token,
        )
        return _row(row) if row else None

    async def list(self, valid: bool | None = None, now_ms: int = 0) -> list[RegistrationToken]:
        """All tokens, or only the usable (``valid=True``) or unusable ones at ``now_ms``.

        The conditions are exactly those of :meth:`RegistrationToken.usable`.
        """
        if valid is None:
            where, args = "", []
        elif valid:
            where = ("WHERE (uses_allowed IS NULL OR pending + completed < uses_allowed)"
                     " AND (expiry_time IS NULL OR expiry_time > ?)")
            args = [now_ms]
        else:
            where = ("WHERE (uses_allowed IS NOT NULL AND pending + completed >= uses_allowed)"
                     " OR (expiry_time IS NOT NULL AND expiry_time <= ?)")
            args = [now_ms]
        rows = await self._db.query(
            "list_registration_tokens",
            f"SELECT {_COLS} FROM registration_tokens {where} ORDER BY token",
            *args,
        )
        return [_row(r) for r in rows]

    async def update(
        self, token: str, uses_allowed: int | None, expiry_time: int | None
    ) -> RegistrationToken | None:
        """Set both limits; None if there is no such token."""
        return await self.update_fields(
            token, {"uses_allowed": uses_allowed, "expiry_time": expiry_time}
        )

    async def update_fields(
        self, token: str, changes: Mapping[str, int | None]
    ) -> RegistrationToken | None:
        """Change only the given fields (a subset of :data:`UPDATABLE_FIELDS`); returns the
        token as it now is, or None if there is no such token. No changes: just a read."""
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        names = sorted(changes)

        def _update(txn: Txn) -> RegistrationToken | None:
            if names:
                assignments = ", ".join(f"{name} = ?" for name in names)
                txn.execute(
                    f"UPDATE registration_tokens SET {assignments} WHERE token = ?",
                    (*[changes[name] for name in names], token),
                )
            row = txn.query_one(f"SELECT {_COLS} FROM registration_tokens WHERE token = ?",
                                (token,))
            return _row(row) if row else None

        return await self._db.run("update_registration_token", _update)

    async def delete(self, token: str) -> bool:
        count = await self._db.execute(
            "delete_registration_token", "DELETE FROM registration_tokens WHERE token = ?", token
        )
        return count > 0


# Transaction helpers: a token's use is counted in the same transaction as what it pays
# for (the UIA stage result, the new account), so no request can spend it twice.


def reserve_token_txn(txn: Txn, token: str, now_ms: int) -> bool:
    """Count a pending use if the token is unexpired and has a use left; False otherwise."""
    txn.execute(
        "UPDATE registration_tokens SET pending = pending + 1 WHERE token = ?"
        " AND (expiry_time IS NULL OR expiry_time > ?)"
        " AND (uses_allowed IS NULL OR pending + completed < uses_allowed)",
        (token, now_ms),
    )
    return txn.rowcount == 1


def use_token_txn(txn: Txn, token: str) -> bool:
    """Turn the caller's pending use into a completed one. The guard on ``completed``
    refuses the use if the limit has been reached meanwhile (e.g. an admin lowered
    ``uses_allowed``) or the token was deleted; False then."""
    txn.execute(
        "UPDATE registration_tokens SET completed = completed + 1,"
        " pending = CASE WHEN pending > 0 THEN pending - 1 ELSE 0 END"
        " WHERE token = ? AND (uses_allowed IS NULL OR completed < uses_allowed)",
        (token,),
    )
    return txn.rowcount == 1


def release_token_txn(txn: Txn, token: str) -> None:
    """Give back a pending use (its UIA session expired unused)."""
    txn.execute(
        "UPDATE registration_tokens SET pending = pending - 1 WHERE token = ? AND pending > 0",
        (token,),
    )
