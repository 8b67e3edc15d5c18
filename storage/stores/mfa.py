"""The ``mfa_totp`` and ``mfa_recovery_codes`` tables: TOTP two-factor login.

Every read and write of a TOTP secret goes through :func:`_seal_secret` /
:func:`_open_secret`: encryption at rest (``self.vault``) wraps those two only.
The one-time guarantees (a time-step accepted once, a recovery code spent once) are
guarded UPDATEs: of concurrent requests, exactly one sees ``rowcount == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.crypto.at_rest import PLAINTEXT_VAULT, Location, SecretVault
from storage.database import Database, Txn

# Encryption at rest binds a secret to its row. Both columns share one location because
# confirming an enrolment moves ``pending_secret`` into ``secret`` in SQL.
_SECRET_COLUMNS = ("secret", "pending_secret")


def _location(user_id: str) -> Location:
    return Location("mfa_totp", "secret", user_id)


def _seal_secret(vault: SecretVault, user_id: str, secret: str) -> str:
    """What is stored for ``secret``: an envelope bound to ``user_id`` when a key is
    configured (homeserver/crypto/at_rest.py), else the secret itself."""
    return vault.seal(secret, _location(user_id))


async def _open_secret(vault: SecretVault, user_id: str, stored: str | None) -> str | None:
    """The inverse of :func:`_seal_secret`; a tampered or moved value is refused
    (AtRestError, audited), never returned."""
    return await vault.open(stored, _location(user_id))


@dataclass(frozen=True)
class TotpState:
    user_id: str
    secret: str | None  # the confirmed secret; None: not enabled
    pending_secret: str | None
    pending_ts: int | None
    enabled_ts: int | None
    last_step: int

    @property
    def enabled(self) -> bool:
        return self.secret is not None


class MfaStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.vault: SecretVault = PLAINTEXT_VAULT  # set at wiring (areas/accounts.py)

    async def get_totp(self, user_id: str) -> TotpState | None:
        row = await self._db.query_one(
            "get_mfa_totp",
            "SELECT secret, pending_secret, pending_ts, enabled_ts, last_step"
            " FROM mfa_totp WHERE user_id = ?",
            user_id,
        )
        if row is None:
            return None
        return TotpState(
            user_id, await _open_secret(self.vault, user_id, row[0]),
            await _open_secret(self.vault, user_id, row[1]),
            None if row[2] is None else int(row[2]), None if row[3] is None else int(row[3]),
            int(row[4]),
        )

    async def is_enabled(self, user_id: str) -> bool:
        row = await self._db.query_one(
            "mfa_is_enabled",
            "SELECT 1 FROM mfa_totp WHERE user_id = ? AND secret IS NOT NULL", user_id)
        return row is not None

    async def set_pending_secret(self, user_id: str, secret: str, now_ms: int) -> bool:
        """Start (or restart) an enrolment. False if TOTP is already enabled."""
        sealed = _seal_secret(self.vault, user_id, secret)

        def _set(txn: Txn) -> bool:
            row = txn.query_one("SELECT secret FROM mfa_totp WHERE user_id = ?", (user_id,))
            if row is None:
                txn.execute(
                    "INSERT INTO mfa_totp (user_id, pending_secret, pending_ts, last_step)"
                    " VALUES (?, ?, ?, 0)", (user_id, sealed, now_ms))
                return True
            if row[0] is not None:
                return False
            txn.execute(
                "UPDATE mfa_totp SET pending_secret = ?, pending_ts = ?"
                " WHERE user_id = ? AND secret IS NULL", (sealed, now_ms, user_id))
            return txn.rowcount == 1

        try:
            return await self._db.run("set_mfa_pending_secret", _set)
        except Exception as e:
            if self._db.is_integrity_error(e):  # a concurrent first enrolment won
                return False
            raise

    async def confirm(
        self, user_id: str, pending_ts: int, step: int, code_hashes: list[str], now_ms: int
    ) -> bool:
        """Turn the pending secret started at ``pending_ts`` into the active one, accept
        ``step`` as used, and store the recovery codes, in one transaction. False if that
        enrolment is no longer pending (confirmed concurrently or restarted)."""

        def _confirm(txn: Txn) -> bool:
            txn.execute(
                "UPDATE mfa_totp SET secret = pending_secret, pending_secret = NULL,"
                " pending_ts = NULL, enabled_ts = ?, last_step = ?"
                " WHERE user_id = ? AND secret IS NULL AND pending_ts = ?",
                (now_ms, step, user_id, pending_ts))
            if txn.rowcount != 1:
                return False
            _replace_codes_txn(txn, user_id, code_hashes, now_ms)
            return True

        return await self._db.run("confirm_mfa_totp", _confirm)

    async def accept_step(self, user_id: str, enabled_ts: int, step: int) -> bool:
        """Record ``step`` as used if it is newer than every step used before (for the
        enrolment of ``enabled_ts``). False: a replay (or MFA changed meanwhile)."""
        n = await self._db.execute(
            "accept_mfa_step",
            "UPDATE mfa_totp SET last_step = ?"
            " WHERE user_id = ? AND enabled_ts = ? AND secret IS NOT NULL AND last_step < ?",
            step, user_id, enabled_ts, step,
        )
        return n == 1

    async def disable(self, user_id: str) -> bool:
        """Remove TOTP and the recovery codes. False if TOTP was not enabled."""

        def _disable(txn: Txn) -> bool:
            txn.execute("DELETE FROM mfa_totp WHERE user_id = ? AND secret IS NOT NULL",
                        (user_id,))
            if txn.rowcount != 1:
                return False
            txn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?", (user_id,))
            return True

        return await self._db.run("disable_mfa", _disable)

    async def unused_recovery_codes(self, user_id: str) -> list[tuple[int, str]]:
        """(code id, Argon2 hash) of every recovery code not yet spent."""
        rows = await self._db.query(
            "get_mfa_recovery_codes",
            "SELECT code_id, code_hash FROM mfa_recovery_codes"
            " WHERE user_id = ? AND used_ts IS NULL ORDER BY code_id",
            user_id,
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def count_unused_recovery_codes(self, user_id: str) -> int:
        row = await self._db.query_one(
            "count_mfa_recovery_codes",
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = ? AND used_ts IS NULL",
            user_id,
        )
        return int(row[0]) if row else 0

    async def spend_recovery_code(self, user_id: str, code_id: int, now_ms: int) -> bool:
        """Mark one code used; False if it was already used (a concurrent request won)."""
        n = await self._db.execute(
            "spend_mfa_recovery_code",
            "UPDATE mfa_recovery_codes SET used_ts = ?"
            " WHERE user_id = ? AND code_id = ? AND used_ts IS NULL",
            now_ms, user_id, code_id,
        )
        return n == 1

    async def replace_recovery_codes(
        self, user_id: str, code_hashes: list[str], now_ms: int
    ) -> bool:
        """A new set of codes, the old ones gone. False if TOTP is not enabled."""

        def _replace(txn: Txn) -> bool:
            if txn.query_one("SELECT 1 FROM mfa_totp WHERE user_id = ? AND secret IS NOT NULL",
                             (user_id,)) is None:
                return False
            _replace_codes_txn(txn, user_id, code_hashes, now_ms)
            return True

        return await self._db.run("replace_mfa_recovery_codes", _replace)

    async def stored_secrets(self, after: str, limit: int) -> list[tuple[str, str, str]]:
        """(user id, column, stored value) of the rows after ``after`` (``parley keys
        rotate`` pages through them)."""
        rows = await self._db.query(
            "list_mfa_sealed_secrets",
            "SELECT user_id, secret, pending_secret FROM mfa_totp WHERE user_id > ?"
            " ORDER BY user_id LIMIT ?", after, limit)
        return [(str(r[0]), col, str(r[i + 1])) for r in rows
                for i, col in enumerate(_SECRET_COLUMNS) if r[i + 1] is not None]

    async def reseal_secret(self, user_id: str, column: str, stored: str) -> bool:
        """Re-encrypt one stored secret under the active key in its own transaction,
        only if it still holds ``stored`` (a concurrent write wins). Raises AtRestError
        (audited) if ``stored`` cannot be opened."""
        if column not in _SECRET_COLUMNS:
            raise ValueError(column)
        plain = await _open_secret(self.vault, user_id, stored)
        assert plain is not None
        n = await self._db.execute(
            "reseal_mfa_secret",
            f"UPDATE mfa_totp SET {column} = ? WHERE user_id = ? AND {column} = ?",
            _seal_secret(self.vault, user_id, plain), user_id, stored)
        return n == 1

    async def delete_user(self, user_id: str) -> None:
        """Forget everything about the user's MFA (deactivation)."""

        def _delete(txn: Txn) -> None:
            txn.execute("DELETE FROM mfa_totp WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?", (user_id,))

        await self._db.run("delete_user_mfa", _delete)


def _replace_codes_txn(txn: Txn, user_id: str, code_hashes: list[str], now_ms: int) -> None:
    txn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?", (user_id,))
    txn.executemany(
        "INSERT INTO mfa_recovery_codes (user_id, code_id, code_hash, created_ts)"
        " VALUES (?, ?, ?, ?)",
        [(user_id, i, h, now_ms) for i, h in enumerate(code_hashes)],
    )
