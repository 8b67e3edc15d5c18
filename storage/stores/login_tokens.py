"""The ``login_tokens`` table: single-use tokens one signed-in session hands to a new
client (``POST /login/get_token``, then ``POST /login`` with ``m.login.token``).

Only SHA-256 hashes are stored, so a database leak yields no usable tokens. A token is
spent by :meth:`LoginTokenStore.consumer`, a step run inside the transaction that starts
the new session: either both commit or neither does, and of two concurrent logins with
one token exactly one can win.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from storage.database import Database, Txn


class LoginTokenState(enum.Enum):
    """Why a token can or cannot be used (the values are security-event reasons)."""

    VALID = "valid"
    UNKNOWN = "unknown login token"
    EXPIRED = "login token expired"
    USED = "login token already used"
    SESSION_ENDED = "issuing session ended"


@dataclass(frozen=True)
class LoginTokenRecord:
    user_id: str
    device_id: str | None  # the device of the session that asked for the token
    session_id: str
    created_ts: int
    expires_ts: int
    used_ts: int | None


class LoginTokenSpentError(Exception):
    """Raised inside the login transaction when the token can no longer be spent
    (used meanwhile by a concurrent login, expired, or its session ended): the
    transaction rolls back and no session starts."""


_COLS = "user_id, device_id, session_id, created_ts, expires_ts, used_ts"


class LoginTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_token(self, token_hash: str, user_id: str, device_id: str | None,
                        session_id: str, now_ms: int, expires_ms: int) -> bool:
        """Store a new token and, in the same transaction, drop every expired one
        (keeps the table bounded without a background job). False (nothing stored) if
        the user is unknown or deactivated: the account as stored decides."""

        def _add(txn: Txn) -> bool:
            txn.execute("DELETE FROM login_tokens WHERE expires_ts <= ?", (now_ms,))
            txn.execute(
                "INSERT INTO login_tokens (token_hash, user_id, device_id, session_id,"
                " created_ts, expires_ts, used_ts)"
                " SELECT ?, user_id, ?, ?, ?, ?, NULL FROM users"
                " WHERE user_id = ? AND deactivated = ?",
                (token_hash, device_id, session_id, now_ms, expires_ms, user_id, False),
            )
            return txn.rowcount == 1

        return await self._db.run("add_login_token", _add)

    async def get_token(self, token_hash: str) -> LoginTokenRecord | None:
        """The token as stored, spent or not (None if unknown or swept)."""
        row = await self._db.query_one(
            "get_login_token",
            f"SELECT {_COLS} FROM login_tokens WHERE token_hash = ?", token_hash)
        if row is None:
            return None
        return LoginTokenRecord(row[0], row[1], row[2], int(row[3]), int(row[4]),
                                None if row[5] is None else int(row[5]))

    async def session_active(self, session_id: str) -> bool:
        """Whether the issuing session is still live (not revoked)."""
        row = await self._db.query_one(
            "login_token_session_active",
            "SELECT revoked_ts FROM sessions WHERE session_id = ?", session_id)
        return row is not None and row[0] is None

    def consumer(self, token_hash: str, user_id: str, now_ms: int) -> Callable[[Txn], None]:
        """A step for the transaction that starts the new session: it marks the token
        used, only if it belongs to ``user_id``, is unused, unexpired and its issuing
        session is still live. Raises :class:`LoginTokenSpentError` otherwise (the
        condition in the UPDATE makes a concurrent second spend lose)."""

        def _consume(txn: Txn) -> None:
            txn.execute(
                "UPDATE login_tokens SET used_ts = ?"
                " WHERE token_hash = ? AND user_id = ? AND used_ts IS NULL AND expires_ts > ?"
                " AND EXISTS (SELECT 1 FROM sessions s WHERE s.session_id ="
                " login_tokens.session_id AND s.revoked_ts IS NULL)",
                (now_ms, token_hash, user_id, now_ms),
            )
            if txn.rowcount != 1:
                raise LoginTokenSpentError(user_id)

        return _consume

    async def count_tokens(self) -> int:
        """How many rows exist, spent or expired or not (tests see the sweep)."""
        row = await self._db.query_one("count_login_tokens", "SELECT COUNT(*) FROM login_tokens")
        return int(row[0]) if row else 0
