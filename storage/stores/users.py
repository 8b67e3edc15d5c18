"""The ``users`` table: accounts and their password hashes."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from homeserver.crypto.content import PLAIN_CODEC, FieldCodec
from storage.database import Database, Txn
from storage.stores.profiles import seal_column


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    password_hash: str | None
    created_ts: int
    is_admin: bool
    is_guest: bool
    deactivated: bool


class UserInUseError(Exception):
    pass


class UserStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.profile_codec: FieldCodec = PLAIN_CODEC  # secrets.encrypt_profiles, at wiring

    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        now_ms: int,
        is_admin: bool = False,
        is_guest: bool = False,
        displayname: str | None = None,
        consume: Callable[[Txn], None] | None = None,
    ) -> None:
        """Insert a user and its profile row; raise :class:`UserInUseError` if taken.

        ``consume`` runs first in the same transaction: it spends the one-time grants
        that pay for this account (UIA session, registration-token use) and raises to
        refuse, so a grant is spent if and only if the account is created.
        """

        stored_name = seal_column(self.profile_codec, user_id, "displayname", displayname)

        def _create(txn: Txn) -> None:
            if consume is not None:
                consume(txn)
            txn.execute(
                "INSERT INTO users (user_id, password_hash, created_ts, is_admin, is_guest)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, password_hash, now_ms, is_admin, is_guest),
            )
            txn.execute("INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                        (user_id, stored_name))

        try:
            await self._db.run("create_user", _create)
        except Exception as e:
            if self._db.is_integrity_error(e):
                raise UserInUseError(user_id) from e
            raise

    async def upgrade_guest(
        self, user_id: str, password_hash: str, consume: Callable[[Txn], None] | None = None
    ) -> bool:
        """Make an active guest account a full account with this password, spending
        ``consume``'s grants in the same transaction. False (nothing spent) if the
        account is not an active guest (any more)."""

        def _upgrade(txn: Txn) -> bool:
            txn.execute(
                "UPDATE users SET password_hash = ?, is_guest = ?"
                " WHERE user_id = ? AND is_guest = ? AND deactivated = ?",
                (password_hash, False, user_id, True, False),
            )
            if txn.rowcount != 1:
                return False
            if consume is not None:
                consume(txn)
            return True

        return bool(await self._db.run("upgrade_guest", _upgrade))

    async def get_user(self, user_id: str) -> UserRecord | None:
        row = await self._db.query_one(
            "get_user",
            "SELECT user_id, password_hash, created_ts, is_admin, is_guest, deactivated"
            " FROM users WHERE user_id = ?",
            user_id,
        )
        if row is None:
            return None
        return UserRecord(row[0], row[1], int(row[2]), bool(row[3]), bool(row[4]), bool(row[5]))

    async def user_exists(self, user_id: str) -> bool:
        row = await self._db.query_one(
            "user_exists", "SELECT 1 FROM users WHERE user_id = ?", user_id
        )
        return row is not None

    async def set_password_hash(self, user_id: str, password_hash: str, now_ms: int) -> None:
        await self._db.execute(
            "set_password_hash",
            "UPDATE users SET password_hash = ?, password_changed_ts = ? WHERE user_id = ?",
            password_hash, now_ms, user_id,
        )

    async def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        """Swap a hash for a rehash of the same password, unless it changed meanwhile."""
        count = await self._db.execute(
            "rehash_password",
            "UPDATE users SET password_hash = ? WHERE user_id = ? AND password_hash = ?",
            new_hash, user_id, old_hash,
        )
        return count > 0

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self._db.execute(
            "set_admin", "UPDATE users SET is_admin = ? WHERE user_id = ?", is_admin, user_id
        )

    async def deactivate(self, user_id: str, now_ms: int) -> None:
        """Mark deactivated and drop the password hash; the user id stays reserved."""
        await self._db.execute(
            "deactivate_user",
            "UPDATE users SET deactivated = ?, deactivated_ts = ?, password_hash = NULL"
            " WHERE user_id = ?",
            True, now_ms, user_id,
        )

    async def mark_erased(self, user_id: str, now_ms: int) -> None:
        """Record that the user asked for erasure when deactivating (idempotent)."""
        await self._db.execute(
            "mark_erased",
            "INSERT INTO erased_users (user_id, erased_ts) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO NOTHING",
            user_id, now_ms,
        )

    async def erased_among(self, user_ids: Collection[str]) -> set[str]:
        """The given users who were erased (checked in chunks of 100 ids)."""
        ids = sorted(set(user_ids))
        out: set[str] = set()
        for i in range(0, len(ids), 100):
            chunk = ids[i:i + 100]
            rows = await self._db.query(
                "erased_among",
                f"SELECT user_id FROM erased_users WHERE user_id IN"
                f" ({', '.join('?' * len(chunk))})",
                *chunk,
            )
            out.update(r[0] for r in rows)
        return out
