"""Federation signing keys: our own published keys' history and the cache of other
servers' keys (tables of schema/0040_server_keys.sql)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from storage.database import Database, Txn


@dataclass(frozen=True)
class OwnKeyRecord:
    key_id: str
    verify_key: str  # unpadded Base64
    first_seen_ts: int
    expired_ts: int | None


@dataclass(frozen=True)
class RemoteKeyRecord:
    server_name: str
    key_id: str
    verify_key: str  # unpadded Base64
    valid_until_ts: int  # already capped when stored
    expired_ts: int | None  # set for a key served in old_verify_keys
    fetched_ts: int
    from_server: str
    key_json: str  # the signed key response the key came in


_REMOTE_COLS = ("server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts,"
                " from_server, key_json")


def _remote(row: tuple) -> RemoteKeyRecord:
    return RemoteKeyRecord(row[0], row[1], row[2], int(row[3]),
                           None if row[4] is None else int(row[4]), int(row[5]), row[6], row[7])


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def note_current_key(self, key_id: str, verify_key: str, now_ms: int) -> None:
        """Record ``key_id`` as the key in use; every other key not yet retired becomes
        an old key as of ``now_ms`` (a key file was rotated). A retired key coming back
        is in use again."""

        def _note(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO server_signing_key_history (key_id, verify_key, first_seen_ts,"
                " expired_ts) VALUES (?, ?, ?, NULL)"
                " ON CONFLICT (key_id) DO UPDATE SET expired_ts = NULL",
                (key_id, verify_key, now_ms))
            txn.execute(
                "UPDATE server_signing_key_history SET expired_ts = ?"
                " WHERE key_id <> ? AND expired_ts IS NULL", (now_ms, key_id))

        await self._db.run("note_current_signing_key", _note)

    async def own_keys(self) -> list[OwnKeyRecord]:
        rows = await self._db.query(
            "own_signing_keys",
            "SELECT key_id, verify_key, first_seen_ts, expired_ts"
            " FROM server_signing_key_history ORDER BY first_seen_ts, key_id")
        return [OwnKeyRecord(r[0], r[1], int(r[2]), None if r[3] is None else int(r[3]))
                for r in rows]

    async def store_remote_keys(self, records: Iterable[RemoteKeyRecord]) -> None:
        """Insert or replace cached keys (a newer fetch replaces an older one)."""
        rows = [(r.server_name, r.key_id, r.verify_key, r.valid_until_ts, r.expired_ts,
                 r.fetched_ts, r.from_server, r.key_json) for r in records]
        if not rows:
            return

        def _store(txn: Txn) -> None:
            txn.executemany(
                f"INSERT INTO remote_server_keys ({_REMOTE_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, key_id) DO UPDATE SET"
                " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
                " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts,"
                " from_server = excluded.from_server, key_json = excluded.key_json",
                rows)

        await self._db.run("store_remote_server_keys", _store)

    async def remote_key(self, server_name: str, key_id: str) -> RemoteKeyRecord | None:
        row = await self._db.query_one(
            "remote_server_key",
            f"SELECT {_REMOTE_COLS} FROM remote_server_keys"
            " WHERE server_name = ? AND key_id = ?", server_name, key_id)
        return _remote(row) if row is not None else None

    async def remote_keys(self, server_name: str) -> list[RemoteKeyRecord]:
        rows = await self._db.query(
            "remote_server_keys",
            f"SELECT {_REMOTE_COLS} FROM remote_server_keys WHERE server_name = ?"
            " ORDER BY key_id", server_name)
        return [_remote(r) for r in rows]
