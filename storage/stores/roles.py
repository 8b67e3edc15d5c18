"""Admin roles and account restrictions on the ``users`` table (schema 0031), and the
admin API's user listing. All SQL of homeserver/handlers/admin_users.py lives here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from homeserver.crypto.content import PLAIN_CODEC, FieldCodec, sql_sealed
from storage.database import Database, Txn
from storage.stores.profiles import open_profile_columns

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class AccountStatus:
    """What the per-request gate and login need to know about an account."""

    locked: bool = False
    suspended: bool = False
    password_reset_required: bool = False
    deactivated: bool = False


@dataclass(frozen=True)
class AdminUserRow:
    """One user as the admin API lists it: metadata only."""

    user_id: str
    created_ts: int
    is_admin: bool
    is_guest: bool
    deactivated: bool
    role: str | None
    locked: bool
    suspended: bool
    password_reset_required: bool
    displayname: str | None
    avatar_url: str | None
    erased: bool
    last_seen_ts: int | None
    shadow_banned: bool = False


# Synapse's order_by values → a column (always followed by user_id for a stable order).
ORDER_COLUMNS = {
    "name": "u.user_id", "is_guest": "u.is_guest", "admin": "u.is_admin",
    "deactivated": "u.deactivated", "creation_ts": "u.created_ts",
    "displayname": "p.displayname", "avatar_url": "p.avatar_url", "locked": "u.locked",
    "suspended": "u.suspended", "last_seen_ts": "last_seen_ts",
}

_SELECT = (
    "SELECT u.user_id, u.created_ts, u.is_admin, u.is_guest, u.deactivated, u.admin_role,"
    " u.locked, u.suspended, u.password_reset_required, p.displayname, p.avatar_url,"
    " e.user_id, (SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id)"
    " AS last_seen_ts,"
    " (SELECT 1 FROM shadow_banned_users sb WHERE sb.user_id = u.user_id) AS shadow_banned"
    " FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
    " LEFT JOIN erased_users e ON e.user_id = u.user_id"
)


def _user_row(r: tuple, codec: FieldCodec = PLAIN_CODEC) -> AdminUserRow:
    """A row of ``_SELECT``; ``codec`` opens profile columns sealed at rest."""
    name, avatar = open_profile_columns(codec, r[0], r[9], r[10])
    return AdminUserRow(r[0], int(r[1]), bool(r[2]), bool(r[3]), bool(r[4]), r[5],
                        bool(r[6]), bool(r[7]), bool(r[8]), name, avatar, r[11] is not None,
                        int(r[12]) if r[12] is not None else None, r[13] is not None)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class UserQuery:
    name: str | None = None  # substring of the user id or display name
    guests: bool = True
    deactivated: bool = False
    order_by: str = "name"
    descending: bool = False
    offset: int = 0
    limit: int = 100


class RoleStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.profile_codec: FieldCodec = PLAIN_CODEC  # secrets.encrypt_profiles, at wiring
        # Told the user id after a role or restriction changed (the status cache of
        # homeserver/auth/account_status.py forgets its entry at once).
        self.on_change: list[Callable[[str], None]] = []

    def _changed(self, user_id: str) -> None:
        for listener in self.on_change:
            listener(user_id)

    async def get_role(self, user_id: str) -> str | None:
        """The user's role; ``admin`` for the legacy flag; None: no role (or no user)."""
        row = await self._db.query_one(
            "get_admin_role", "SELECT is_admin, admin_role FROM users WHERE user_id = ?",
            user_id)
        if row is None:
            return None
        return ADMIN_ROLE if row[0] else row[1]

    async def set_role(self, user_id: str, role: str | None) -> str | None:
        """Set (None: clear) the role, keeping ``is_admin`` equal to "role is admin".
        Returns the previous role; raises KeyError for an unknown user."""

        def _set(txn: Txn) -> str | None:
            row = txn.query_one("SELECT is_admin, admin_role FROM users WHERE user_id = ?",
                                (user_id,))
            if row is None:
                raise KeyError(user_id)
            txn.execute("UPDATE users SET is_admin = ?, admin_role = ? WHERE user_id = ?",
                        (role == ADMIN_ROLE, role, user_id))
            return ADMIN_ROLE if row[0] else row[1]

        previous = await self._db.run("set_admin_role", _set)
        self._changed(user_id)
        return previous

    async def get_status(self, user_id: str) -> AccountStatus | None:
        row = await self._db.query_one(
            "get_account_status",
            "SELECT locked, suspended, password_reset_required, deactivated FROM users"
            " WHERE user_id = ?", user_id)
        if row is None:
            return None
        return AccountStatus(bool(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))

    async def set_flag(self, user_id: str, flag: str, value: bool) -> bool:
        """Set ``locked``, ``suspended`` or ``password_reset_required``; False if no
        such user."""
        if flag not in ("locked", "suspended", "password_reset_required"):
            raise ValueError(flag)
        count = await self._db.execute(
            f"set_{flag}", f"UPDATE users SET {flag} = ? WHERE user_id = ?", value, user_id)
        self._changed(user_id)
        return count > 0

    async def get_user(self, user_id: str) -> AdminUserRow | None:
        row = await self._db.query_one("admin_get_user", _SELECT + " WHERE u.user_id = ?",
                                       user_id)
        if row is None:
            return None
        codec = self.profile_codec

        async def decode() -> AdminUserRow:
            return _user_row(row, codec)

        return await codec.audited(decode)

    async def list_users(self, q: UserQuery) -> tuple[list[AdminUserRow], int]:
        """One page of users and the total matching ``q``."""
        where: list[str] = []
        args: list[object] = []
        if q.name:
            # A display name sealed at rest is opaque here: such users match by id.
            where.append("(LOWER(u.user_id) LIKE ? ESCAPE '\\'"
                         " OR (LOWER(p.displayname) LIKE ? ESCAPE '\\'"
                         f" AND NOT {sql_sealed('p.displayname')}))")
            pattern = f"%{_escape_like(q.name.lower())}%"
            args += [pattern, pattern]
        if not q.guests:
            where.append("u.is_guest = ?")
            args.append(False)
        if not q.deactivated:
            where.append("u.deactivated = ?")
            args.append(False)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        column = ORDER_COLUMNS[q.order_by]
        direction = "DESC" if q.descending else "ASC"
        order = f" ORDER BY {column} {direction}, u.user_id {direction}"

        codec = self.profile_codec

        def _list(txn: Txn) -> tuple[list[AdminUserRow], int]:
            count = txn.query_one(
                "SELECT COUNT(*) FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
                + clause, args)
            rows = txn.query(_SELECT + clause + order + " LIMIT ? OFFSET ?",
                             [*args, q.limit, q.offset])
            return [_user_row(r, codec) for r in rows], int(count[0]) if count else 0

        return await codec.audited(lambda: self._db.run("admin_list_users", _list))
