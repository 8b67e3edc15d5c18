"""The ``remote_media_cache`` table (schema/0044_remote_media.sql): metadata of other
servers' media cached for local clients. A row reads as quarantined when its flag is
set or its sha256 is in ``quarantined_media_hashes`` (the local media's rule)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn

_HASH_QUARANTINED = ("EXISTS (SELECT 1 FROM quarantined_media_hashes h"
                     " WHERE h.sha256 = remote_media_cache.sha256)")
_COLUMNS = ("server_name, media_id, content_type, size, sha256, created_ts, last_access_ts,"
            f" CASE WHEN quarantined = 1 OR {_HASH_QUARANTINED} THEN 1 ELSE 0 END")


@dataclass(frozen=True)
class RemoteMediaInfo:
    server_name: str
    media_id: str
    content_type: str
    size: int
    sha256: str
    created_ts: int
    last_access_ts: int
    quarantined: bool


def _row(row: tuple) -> RemoteMediaInfo:  # type: ignore[type-arg]
    return RemoteMediaInfo(row[0], row[1], row[2], int(row[3]), row[4], int(row[5]),
                           int(row[6]), bool(row[7]))


class RemoteMediaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, server_name: str, media_id: str) -> RemoteMediaInfo | None:
        row = await self._db.query_one(
            "get_remote_media",
            f"SELECT {_COLUMNS} FROM remote_media_cache WHERE server_name = ? AND media_id = ?",
            server_name, media_id)
        return _row(row) if row is not None else None

    async def is_hash_quarantined(self, sha256: str) -> bool:
        row = await self._db.query_one(
            "remote_media_hash_quarantined",
            "SELECT 1 FROM quarantined_media_hashes WHERE sha256 = ?", sha256)
        return row is not None

    async def insert(self, info: RemoteMediaInfo) -> None:
        """Record a cached file (a concurrent fetch of the same media keeps the first)."""
        await self._db.execute(
            "insert_remote_media",
            "INSERT INTO remote_media_cache (server_name, media_id, content_type, size, sha256,"
            " created_ts, last_access_ts, quarantined) VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
            " ON CONFLICT (server_name, media_id) DO NOTHING",
            info.server_name, info.media_id, info.content_type, info.size, info.sha256,
            info.created_ts, info.last_access_ts)

    async def touch(self, server_name: str, media_id: str, now_ms: int) -> None:
        await self._db.execute(
            "touch_remote_media",
            "UPDATE remote_media_cache SET last_access_ts = ? WHERE server_name = ?"
            " AND media_id = ?", now_ms, server_name, media_id)

    async def total_size(self) -> int:
        row = await self._db.query_one("remote_media_total",
                                       "SELECT COALESCE(SUM(size), 0) FROM remote_media_cache")
        return int(row[0]) if row is not None else 0

    async def least_recently_used(self, limit: int) -> list[RemoteMediaInfo]:
        rows = await self._db.query(
            "remote_media_lru",
            f"SELECT {_COLUMNS} FROM remote_media_cache ORDER BY last_access_ts, server_name,"
            " media_id LIMIT ?", limit)
        return [_row(r) for r in rows]

    async def delete(self, server_name: str, media_id: str) -> bool:
        n = await self._db.execute(
            "delete_remote_media",
            "DELETE FROM remote_media_cache WHERE server_name = ? AND media_id = ?",
            server_name, media_id)
        return n > 0

    async def quarantine(self, server_name: str, media_id: str, by: str, now_ms: int) -> bool:
        """Quarantine a cached media and its content hash; False if it is not cached."""

        def _do(txn: Txn) -> bool:
            row = txn.query_one(
                "SELECT sha256 FROM remote_media_cache WHERE server_name = ? AND media_id = ?",
                (server_name, media_id))
            if row is None:
                return False
            txn.execute("UPDATE remote_media_cache SET quarantined = 1 WHERE server_name = ?"
                        " AND media_id = ?", (server_name, media_id))
            txn.execute("INSERT INTO quarantined_media_hashes (sha256, quarantined_by,"
                        " quarantined_ts) VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                        (row[0], by, now_ms))
            return True

        return await self._db.run("quarantine_remote_media", _do)
