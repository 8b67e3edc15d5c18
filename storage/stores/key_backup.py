"""``room_key_backup_users``, ``room_key_backup_versions`` and ``room_key_backup_keys``.

Every write first locks the user's ``room_key_backup_users`` row, so one user's
version changes and key uploads are serialised across processes (on PostgreSQL the
row lock; SQLite has a single writer anyway). Deciding which uploaded keys replace
stored ones, writing them, bumping the etag and counting all happen in that one
transaction, so two devices uploading the same session cannot interleave.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn


class BackupVersionNotFoundError(Exception):
    """The user has no live backup with that version (or no backup at all)."""


class WrongBackupVersionError(Exception):
    """Keys may only be uploaded to the current version; ``current`` is that version."""

    def __init__(self, current: int) -> None:
        super().__init__(current)
        self.current = current


@dataclass(frozen=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: dict[str, Any] | str  # a string only for algorithms other than the spec's
    etag: int
    count: int


@dataclass(frozen=True)
class RoomKey:
    """One backed-up session: the metadata the replacement rules compare, and the blob."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any] | str  # a string only for algorithms other than the spec's


# The stored key, the uploaded key → whether the upload replaces what is stored.
ReplacePolicy = Callable[[RoomKey, RoomKey], bool]
# room_id → session_id → key
KeyTree = dict[str, dict[str, RoomKey]]

_VERSION_COLS = "version, algorithm, auth_data, etag, key_count"
_KEY_COLS = "room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"


def _dump(value: dict[str, Any] | str) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _version(row: tuple[Any, ...]) -> BackupVersion:
    return BackupVersion(int(row[0]), row[1], json.loads(row[2]), int(row[3]), int(row[4]))


def _lock_user(txn: Txn, user_id: str) -> int | None:
    """Lock the user's backup row; return the last version handed out, or None."""
    txn.execute(
        "UPDATE room_key_backup_users SET last_version = last_version WHERE user_id = ?", (user_id,)
    )
    row = txn.query_one("SELECT last_version FROM room_key_backup_users WHERE user_id = ?", (user_id,))
    return int(row[0]) if row else None


def _get_version(txn: Txn, user_id: str, version: int | None) -> BackupVersion | None:
    if version is None:
        row = txn.query_one(
            f"SELECT {_VERSION_COLS} FROM room_key_backup_versions WHERE user_id = ?"
            " ORDER BY version DESC LIMIT 1",
            (user_id,),
        )
    else:
        row = txn.query_one(
            f"SELECT {_VERSION_COLS} FROM room_key_backup_versions WHERE user_id = ? AND version = ?",
            (user_id, version),
        )
    return _version(row) if row else None


def _key_filter(room_id: str | None, session_id: str | None) -> tuple[str, tuple[str, ...]]:
    if room_id is None:
        return "", ()
    if session_id is None:
        return " AND room_id = ?", (room_id,)
    return " AND room_id = ? AND session_id = ?", (room_id, session_id)


def _set_version_counters(txn: Txn, user_id: str, version: int, etag: int, count: int) -> None:
    txn.execute(
        "UPDATE room_key_backup_versions SET etag = ?, key_count = ? WHERE user_id = ? AND version = ?",
        (etag, count, user_id, version),
    )


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_version(self, user_id: str, algorithm: str,
                             auth_data: dict[str, Any] | str) -> int:
        """Add a version greater than any the user ever had; it becomes the current one."""

        def _do(txn: Txn) -> int:
            # Two first-ever creates may race: the loser's insert waits, then does nothing.
            txn.execute(
                "INSERT INTO room_key_backup_users (user_id, last_version) VALUES (?, 0)"
                " ON CONFLICT (user_id) DO NOTHING",
                (user_id,),
            )
            txn.execute(
                "UPDATE room_key_backup_users SET last_version = last_version + 1 WHERE user_id = ?",
                (user_id,),
            )
            version = _lock_user(txn, user_id)
            if version is None:  # the row was inserted above
                raise RuntimeError("room_key_backup_users row vanished")
            txn.execute(
                "INSERT INTO room_key_backup_versions"
                " (user_id, version, algorithm, auth_data, etag, key_count) VALUES (?, ?, ?, ?, 0, 0)",
                (user_id, version, algorithm, _dump(auth_data)),
            )
            return version

        return await self._db.run("create_backup_version", _do)

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """The given live version, or the current one when ``version`` is None."""
        return await self._db.run("get_backup_version", _get_version, user_id, version)

    async def update_auth_data(self, user_id: str, version: int,
                               auth_data: dict[str, Any] | str) -> bool:
        """Replace a live version's ``auth_data``; False when there is no such version."""

        def _do(txn: Txn) -> bool:
            _lock_user(txn, user_id)
            txn.execute(
                "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
                (_dump(auth_data), user_id, version),
            )
            return txn.rowcount > 0

        return await self._db.run("update_backup_auth_data", _do)

    async def delete_version(self, user_id: str, version: int) -> bool:
        """Delete a version and all its keys; False when there is no such version."""

        def _do(txn: Txn) -> bool:
            _lock_user(txn, user_id)
            txn.execute(
                "DELETE FROM room_key_backup_versions WHERE user_id = ? AND version = ?",
                (user_id, version),
            )
            if txn.rowcount <= 0:
                return False
            txn.execute(
                "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?", (user_id, version)
            )
            return True

        return await self._db.run("delete_backup_version", _do)

    async def get_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> KeyTree:
        """The keys of a live version, optionally one room's or one session's.

        Raises BackupVersionNotFoundError when the version does not exist.
        """
        where, args = _key_filter(room_id, session_id)

        def _do(txn: Txn) -> KeyTree:
            if _get_version(txn, user_id, version) is None:
                raise BackupVersionNotFoundError()
            rows = txn.query(
                f"SELECT {_KEY_COLS} FROM room_key_backup_keys WHERE user_id = ? AND version = ?{where}"
                " ORDER BY room_id, session_id",
                (user_id, version, *args),
            )
            tree: KeyTree = {}
            for r in rows:
                tree.setdefault(r[0], {})[r[1]] = RoomKey(int(r[2]), int(r[3]), bool(r[4]), json.loads(r[5]))
            return tree

        return await self._db.run("get_backup_keys", _do)

    async def upload_keys(
        self, user_id: str, version: int, keys: KeyTree, should_replace: ReplacePolicy
    ) -> tuple[int, int]:
        """Merge ``keys`` into the current version; return its (etag, count).

        A new session is inserted; a stored one is overwritten only when
        ``should_replace(stored, uploaded)``. The etag moves only if something was written.
        Raises BackupVersionNotFoundError for an unknown version and
        WrongBackupVersionError for a live version that is not the current one.
        """

        def _do(txn: Txn) -> tuple[int, int]:
            _lock_user(txn, user_id)
            current = _get_version(txn, user_id, None)
            if current is None:
                raise BackupVersionNotFoundError()
            if current.version != version:
                if _get_version(txn, user_id, version) is None:
                    raise BackupVersionNotFoundError()
                raise WrongBackupVersionError(current.version)
            inserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            for room_id, sessions in keys.items():
                stored = self._stored_sessions(txn, user_id, version, room_id, list(sessions))
                for session_id, key in sessions.items():
                    old = stored.get(session_id)
                    if old is not None and not should_replace(old, key):
                        continue
                    values = (key.first_message_index, key.forwarded_count, key.is_verified,
                              _dump(key.session_data))
                    if old is None:
                        inserts.append((user_id, version, room_id, session_id, *values))
                    else:
                        updates.append((*values, user_id, version, room_id, session_id))
            if inserts:
                txn.executemany(
                    f"INSERT INTO room_key_backup_keys (user_id, version, {_KEY_COLS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    inserts,
                )
            if updates:
                txn.executemany(
                    "UPDATE room_key_backup_keys SET first_message_index = ?, forwarded_count = ?,"
                    " is_verified = ?, session_data = ?"
                    " WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
                    updates,
                )
            if not inserts and not updates:
                return current.etag, current.count
            etag, count = current.etag + 1, current.count + len(inserts)
            _set_version_counters(txn, user_id, version, etag, count)
            return etag, count

        return await self._db.run("upload_backup_keys", _do)

    @staticmethod
    def _stored_sessions(
        txn: Txn, user_id: str, version: int, room_id: str, session_ids: list[str]
    ) -> dict[str, RoomKey]:
        """The stored keys among ``session_ids`` of one room (queried in chunks)."""
        found: dict[str, RoomKey] = {}
        for i in range(0, len(session_ids), 200):
            chunk = session_ids[i : i + 200]
            marks = ", ".join("?" for _ in chunk)
            rows = txn.query(
                "SELECT session_id, first_message_index, forwarded_count, is_verified, session_data"
                " FROM room_key_backup_keys WHERE user_id = ? AND version = ? AND room_id = ?"
                f" AND session_id IN ({marks})",
                (user_id, version, room_id, *chunk),
            )
            for r in rows:
                found[r[0]] = RoomKey(int(r[1]), int(r[2]), bool(r[3]), json.loads(r[4]))
        return found

    async def delete_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> tuple[int, int]:
        """Delete keys of a live version (any version, not only the current one, as
        Synapse); return its (etag, count). The etag moves only if a key was deleted.

        Raises BackupVersionNotFoundError when the version does not exist.
        """
        where, args = _key_filter(room_id, session_id)

        def _do(txn: Txn) -> tuple[int, int]:
            _lock_user(txn, user_id)
            info = _get_version(txn, user_id, version)
            if info is None:
                raise BackupVersionNotFoundError()
            txn.execute(
                f"DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?{where}",
                (user_id, version, *args),
            )
            deleted = max(txn.rowcount, 0)
            if not deleted:
                return info.etag, info.count
            etag, count = info.etag + 1, max(info.count - deleted, 0)
            _set_version_counters(txn, user_id, version, etag, count)
            return etag, count

        return await self._db.run("delete_backup_keys", _do)
