"""The ``remote_media_cache`` and ``remote_media_thumbnails`` tables
(schema/0044_remote_media.sql, 0051_remote_thumbnails.sql): metadata of other servers'
media and thumbnails cached for local clients. A media row reads as quarantined when its
flag is set or its sha256 is in ``quarantined_media_hashes`` (the local media's rule).
Rows with the quarantine flag hold no file: they count for nothing in the size bound
and are never evicted or purged, so the quarantine lasts."""

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


@dataclass(frozen=True)
class RemoteThumbnailInfo:
    server_name: str
    media_id: str
    width: int
    height: int
    method: str
    content_type: str
    size: int
    sha256: str
    created_ts: int
    last_access_ts: int


@dataclass(frozen=True)
class CacheEntry:
    """One evictable item of the cache: a media file (``thumbnail`` None) or one of
    its thumbnails."""
    server_name: str
    media_id: str
    size: int
    last_access_ts: int
    thumbnail: RemoteThumbnailInfo | None


_THUMB_COLUMNS = ("server_name, media_id, width, height, method, content_type, size, sha256,"
                  " created_ts, last_access_ts")
_THUMB_KEY = ("server_name = ? AND media_id = ? AND width = ? AND height = ? AND method = ?"
              " AND content_type = ?")


def _thumb(row: tuple) -> RemoteThumbnailInfo:  # type: ignore[type-arg]
    return RemoteThumbnailInfo(row[0], row[1], int(row[2]), int(row[3]), row[4], row[5],
                               int(row[6]), row[7], int(row[8]), int(row[9]))


def _thumb_key(t: RemoteThumbnailInfo) -> tuple[str, str, int, int, str, str]:
    return (t.server_name, t.media_id, t.width, t.height, t.method, t.content_type)


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
        """Bytes held: media files (not the quarantined ones: their file is gone) and
        thumbnails."""
        row = await self._db.query_one(
            "remote_media_total",
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM remote_media_cache"
            " WHERE quarantined = 0) + (SELECT COALESCE(SUM(size), 0)"
            " FROM remote_media_thumbnails)")
        return int(row[0]) if row is not None else 0

    async def least_recently_used(self, limit: int) -> list[CacheEntry]:
        """Media files and thumbnails, least recently served first (quarantined media
        rows are not candidates: they hold nothing and keep the quarantine)."""
        rows = await self._db.query(
            "remote_media_lru",
            "SELECT server_name, media_id, size, last_access_ts, 0, 0, 0, '', ''"
            " FROM remote_media_cache WHERE quarantined = 0"
            " UNION ALL SELECT server_name, media_id, size, last_access_ts, 1, width, height,"
            " method, content_type FROM remote_media_thumbnails"
            " ORDER BY 4, 1, 2, 5, 6, 7, 8, 9 LIMIT ?", limit)
        out = []
        for r in rows:
            thumb = RemoteThumbnailInfo(r[0], r[1], int(r[5]), int(r[6]), r[7], r[8],
                                        int(r[2]), "", 0, int(r[3])) if int(r[4]) else None
            out.append(CacheEntry(r[0], r[1], int(r[2]), int(r[3]), thumb))
        return out

    async def media_not_accessed_since(self, before_ts: int, limit: int
                                       ) -> list[tuple[str, str]]:
        """(server, media id) of cached files last served before ``before_ts``
        (quarantined ones excepted), for the purge."""
        rows = await self._db.query(
            "remote_media_not_accessed",
            "SELECT server_name, media_id FROM remote_media_cache WHERE quarantined = 0"
            " AND last_access_ts < ? ORDER BY last_access_ts, server_name, media_id LIMIT ?",
            before_ts, limit)
        return [(r[0], r[1]) for r in rows]

    async def thumbnails_not_accessed_since(self, before_ts: int, limit: int
                                            ) -> list[RemoteThumbnailInfo]:
        rows = await self._db.query(
            "remote_thumbnails_not_accessed",
            f"SELECT {_THUMB_COLUMNS} FROM remote_media_thumbnails WHERE last_access_ts < ?"
            " ORDER BY last_access_ts, server_name, media_id LIMIT ?", before_ts, limit)
        return [_thumb(r) for r in rows]

    # -- thumbnails -------------------------------------------------------------------

    async def get_thumbnail(self, server_name: str, media_id: str, width: int, height: int,
                            method: str) -> RemoteThumbnailInfo | None:
        """The cached thumbnail of this size (the newest if the server sent several
        types), unless its bytes are quarantined."""
        row = await self._db.query_one(
            "get_remote_thumbnail",
            f"SELECT {_THUMB_COLUMNS} FROM remote_media_thumbnails t WHERE server_name = ?"
            " AND media_id = ? AND width = ? AND height = ? AND method = ? AND NOT EXISTS"
            " (SELECT 1 FROM quarantined_media_hashes h WHERE h.sha256 = t.sha256)"
            " ORDER BY created_ts DESC LIMIT 1", server_name, media_id, width, height, method)
        return _thumb(row) if row is not None else None

    async def insert_thumbnail(self, info: RemoteThumbnailInfo) -> None:
        """Record a cached thumbnail (a concurrent fetch of the same one keeps the
        first)."""
        await self._db.execute(
            "insert_remote_thumbnail",
            f"INSERT INTO remote_media_thumbnails ({_THUMB_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server_name, media_id, width,"
            " height, method, content_type) DO NOTHING",
            *_thumb_key(info), info.size, info.sha256, info.created_ts, info.last_access_ts)

    async def touch_thumbnail(self, info: RemoteThumbnailInfo, now_ms: int) -> None:
        await self._db.execute(
            "touch_remote_thumbnail",
            f"UPDATE remote_media_thumbnails SET last_access_ts = ? WHERE {_THUMB_KEY}",
            now_ms, *_thumb_key(info))

    async def list_thumbnails(self, server_name: str, media_id: str
                              ) -> list[RemoteThumbnailInfo]:
        rows = await self._db.query(
            "list_remote_thumbnails",
            f"SELECT {_THUMB_COLUMNS} FROM remote_media_thumbnails WHERE server_name = ?"
            " AND media_id = ?", server_name, media_id)
        return [_thumb(r) for r in rows]

    async def delete_thumbnail(self, info: RemoteThumbnailInfo) -> bool:
        n = await self._db.execute(
            "delete_remote_thumbnail",
            f"DELETE FROM remote_media_thumbnails WHERE {_THUMB_KEY}", *_thumb_key(info))
        return n > 0

    async def delete(self, server_name: str, media_id: str) -> bool:
        n = await self._db.execute(
            "delete_remote_media",
            "DELETE FROM remote_media_cache WHERE server_name = ? AND media_id = ?",
            server_name, media_id)
        return n > 0

    async def quarantine(self, server_name: str, media_id: str, by: str, now_ms: int) -> bool:
        """Quarantine a cached media and its content hash; False if neither it nor any
        thumbnail of it is cached. With only thumbnails cached, a file-less row holds
        the quarantine (there is no content hash to add)."""

        def _do(txn: Txn) -> bool:
            row = txn.query_one(
                "SELECT sha256 FROM remote_media_cache WHERE server_name = ? AND media_id = ?",
                (server_name, media_id))
            if row is None:
                if txn.query_one("SELECT 1 FROM remote_media_thumbnails WHERE server_name = ?"
                                 " AND media_id = ?", (server_name, media_id)) is None:
                    return False
                txn.execute("INSERT INTO remote_media_cache (server_name, media_id,"
                            " content_type, size, sha256, created_ts, last_access_ts,"
                            " quarantined) VALUES (?, ?, 'application/octet-stream', 0, '',"
                            " ?, ?, 1)", (server_name, media_id, now_ms, now_ms))
                return True
            txn.execute("UPDATE remote_media_cache SET quarantined = 1 WHERE server_name = ?"
                        " AND media_id = ?", (server_name, media_id))
            txn.execute("INSERT INTO quarantined_media_hashes (sha256, quarantined_by,"
                        " quarantined_ts) VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                        (row[0], by, now_ms))
            return True

        return await self._db.run("quarantine_remote_media", _do)
