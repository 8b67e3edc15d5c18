"""The ``openid_tokens`` table: short-lived tokens a user hands to a third party so it
can learn their user id (and nothing else) from ``/openid/userinfo``.

Only SHA-256 hashes are stored, so a database leak yields no usable tokens.
"""

from __future__ import annotations

from storage.database import Database, Txn


class OpenIdTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_token(self, token_hash: str, user_id: str, now_ms: int, expires_ms: int) -> bool:
        """Store a new token and, in the same transaction, drop every expired one.
        False (nothing stored) if the user is unknown or deactivated: the account as
        stored decides, not the caller.

        Deleting on insert keeps the table bounded without a background job: it only
        grows while tokens are being issued, and each issue sweeps what has expired.
        """

        def _add(txn: Txn) -> bool:
            txn.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", (now_ms,))
            txn.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, created_ts, expires_ts)"
                " SELECT ?, user_id, ?, ? FROM users WHERE user_id = ? AND deactivated = ?",
                (token_hash, now_ms, expires_ms, user_id, False),
            )
            return txn.rowcount == 1

        return await self._db.run("add_openid_token", _add)

    async def get_user_id(self, token_hash: str, now_ms: int) -> str | None:
        """The owner of an unexpired token, or None (unknown, expired, or the owner has
        been deactivated since the token was issued)."""
        row = await self._db.query_one(
            "get_openid_token_user",
            "SELECT o.user_id FROM openid_tokens o JOIN users u ON u.user_id = o.user_id"
            " WHERE o.token_hash = ? AND o.expires_ts > ? AND u.deactivated = ?",
            token_hash, now_ms, False,
        )
        return row[0] if row else None

    async def count_tokens(self) -> int:
        """How many rows exist, expired or not (lets tests see the opportunistic sweep)."""
        row = await self._db.query_one("count_openid_tokens", "SELECT COUNT(*) FROM openid_tokens")
        return int(row[0]) if row else 0
