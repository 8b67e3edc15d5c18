"""The ``sessions`` and ``refresh_tokens`` tables: logins and their refresh-token families."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from storage.database import Database, Txn


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    user_id: str
    device_id: str
    created_ts: int
    uses_refresh: bool
    revoked_ts: int | None


class RefreshOutcome(enum.Enum):
    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REUSED = "reused"
    REVOKED = "revoked"


@dataclass(frozen=True)
class RefreshResult:
    outcome: RefreshOutcome
    session: SessionRecord | None = None
    # From the users table at the moment of the refresh, never from the old token.
    is_guest: bool = False


@dataclass(frozen=True)
class StartedSession:
    revoked: list[str]  # earlier sessions of the device, now ended
    is_guest: bool  # from the users table, in the transaction that started the session


class AccountUnavailableError(Exception):
    """The user does not exist or is deactivated: no session may start for it."""


def _account_flags(txn: Txn, user_id: str) -> tuple[bool, bool] | None:
    """(is_guest, deactivated) of a user as stored, or None if there is no such user.
    Every token is minted from these, so a token can never claim more than the account has."""
    row = txn.query_one("SELECT is_guest, deactivated FROM users WHERE user_id = ?", (user_id,))
    return (bool(row[0]), bool(row[1])) if row else None


_COLS = "session_id, user_id, device_id, created_ts, uses_refresh, revoked_ts"


def _row(r: tuple) -> SessionRecord:
    return SessionRecord(r[0], r[1], r[2], int(r[3]), bool(r[4]), r[5])


def _revoke_where(txn: Txn, where: str, args: tuple, reason: str, now_ms: int) -> list[str]:
    rows = txn.query(f"SELECT session_id FROM sessions WHERE revoked_ts IS NULL AND {where}", args)
    sids = [r[0] for r in rows]
    if sids:
        txn.execute(
            f"UPDATE sessions SET revoked_ts = ?, revoked_reason = ?"
            f" WHERE revoked_ts IS NULL AND {where}",
            (now_ms, reason, *args),
        )
    return sids


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_session(
        self,
        session_id: str,
        user_id: str,
        device_id: str,
        now_ms: int,
        refresh_hash: str | None,
        refresh_expires_ms: int | None,
        consume: Callable[[Txn], None] | None = None,
    ) -> StartedSession:
        """Start a session for a device, ending any earlier session of that device
        (the spec: logging in with a device id invalidates its old tokens).

        Raises :class:`AccountUnavailableError` (and changes nothing) if the user does
        not exist or is deactivated, checked in the same transaction. ``consume``
        (e.g. spending a login token) runs first in that transaction: if it raises,
        nothing is written."""

        def _create(txn: Txn) -> StartedSession:
            if consume is not None:
                consume(txn)
            flags = _account_flags(txn, user_id)
            if flags is None or flags[1]:
                raise AccountUnavailableError(user_id)
            revoked = _revoke_where(
                txn, "user_id = ? AND device_id = ?", (user_id, device_id), "relogin", now_ms
            )
            txn.execute(
                f"INSERT INTO sessions ({_COLS}) VALUES (?, ?, ?, ?, ?, NULL)",
                (session_id, user_id, device_id, now_ms, refresh_hash is not None),
            )
            if refresh_hash is not None:
                txn.execute(
                    "INSERT INTO refresh_tokens (token_hash, session_id, created_ts, expires_ts)"
                    " VALUES (?, ?, ?, ?)",
                    (refresh_hash, session_id, now_ms, refresh_expires_ms),
                )
            return StartedSession(revoked, flags[0])

        return await self._db.run("create_session", _create)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._db.query_one(
            "get_session", f"SELECT {_COLS} FROM sessions WHERE session_id = ?", session_id
        )
        return _row(row) if row else None

    async def is_active(self, session_id: str) -> bool:
        row = await self._db.query_one(
            "session_active",
            "SELECT revoked_ts FROM sessions WHERE session_id = ?",
            session_id,
        )
        return row is not None and row[0] is None

    async def revoke_session(self, session_id: str, reason: str, now_ms: int) -> list[str]:
        return await self._db.run(
            "revoke_session",
            lambda txn: _revoke_where(txn, "session_id = ?", (session_id,), reason, now_ms),
        )

    async def revoke_device_sessions(
        self, user_id: str, device_ids: list[str], reason: str, now_ms: int
    ) -> list[str]:
        def _revoke(txn: Txn) -> list[str]:
            out: list[str] = []
            for device_id in device_ids:
                out += _revoke_where(
                    txn, "user_id = ? AND device_id = ?", (user_id, device_id), reason, now_ms
                )
            return out

        return await self._db.run("revoke_device_sessions", _revoke)

    async def revoke_user_sessions(
        self, user_id: str, reason: str, now_ms: int, except_session: str | None = None
    ) -> list[str]:
        if except_session is None:
            where, args = "user_id = ?", (user_id,)
        else:
            where, args = "user_id = ? AND session_id <> ?", (user_id, except_session)
        return await self._db.run(
            "revoke_user_sessions", lambda txn: _revoke_where(txn, where, args, reason, now_ms)
        )

    async def rotate_refresh_token(
        self, token_hash: str, new_hash: str, new_expires_ms: int, now_ms: int
    ) -> RefreshResult:
        """Spend a refresh token and store its successor, atomically.

        A token that was already spent is *reuse*: the whole session is revoked,
        because either the client or an attacker holds a stolen copy. A session whose
        user is gone or deactivated is revoked too (outcome ``REVOKED``). On success the
        result carries the user's stored ``is_guest``, for the new access token.
        """

        def _rotate(txn: Txn) -> RefreshResult:
            row = txn.query_one(
                "SELECT session_id, expires_ts, used_ts FROM refresh_tokens WHERE token_hash = ?",
                (token_hash,),
            )
            if row is None:
                return RefreshResult(RefreshOutcome.UNKNOWN)
            session_id, expires_ts, used_ts = row[0], int(row[1]), row[2]
            srow = txn.query_one(f"SELECT {_COLS} FROM sessions WHERE session_id = ?",
                                 (session_id,))
            session = _row(srow) if srow else None
            if session is None or session.revoked_ts is not None:
                return RefreshResult(RefreshOutcome.REVOKED, session)
            # Claim the token; the condition makes concurrent spends lose.
            txn.execute(
                "UPDATE refresh_tokens SET used_ts = ? WHERE token_hash = ? AND used_ts IS NULL",
                (now_ms, token_hash),
            )
            if used_ts is not None or txn.rowcount != 1:
                _revoke_where(txn, "session_id = ?", (session_id,), "refresh_token_reuse", now_ms)
                return RefreshResult(RefreshOutcome.REUSED, session)
            if expires_ts <= now_ms:
                return RefreshResult(RefreshOutcome.EXPIRED, session)
            flags = _account_flags(txn, session.user_id)
            if flags is None or flags[1]:
                _revoke_where(txn, "session_id = ?", (session_id,), "deactivated", now_ms)
                return RefreshResult(RefreshOutcome.REVOKED, session)
            txn.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_ts, expires_ts)"
                " VALUES (?, ?, ?, ?)",
                (new_hash, session_id, now_ms, new_expires_ms),
            )
            return RefreshResult(RefreshOutcome.OK, session, is_guest=flags[0])

        result = await self._db.run("rotate_refresh_token", _rotate)
        return result
