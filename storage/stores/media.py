"""The ``local_media`` and ``local_media_thumbnails`` tables.

Metadata only: owner, size, sha256, content type, created time and the quarantine
flag. The filename a client sends is never stored (data minimisation); downloads use
the name in the URL, if any.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn

_COLUMNS = "media_id, owner, content_type, size, sha256, created_ts, unused_expires_ts, quarantined"


@dataclass(frozen=True)
class MediaInfo:
    media_id: str
    owner: str
    content_type: str | None
    size: int | None  # None: reserved by /create, content not uploaded yet
    sha256: str | None
    created_ts: int
    unused_expires_ts: int | None
    quarantined: bool

    @property
    def uploaded(self) -> bool:
        return self.size is not None


@dataclass(frozen=True)
class ThumbnailInfo:
    width: int
    height: int
    method: str
    content_type: str
    size: int


def _row(row: tuple) -> MediaInfo:  # type: ignore[type-arg]
    return MediaInfo(row[0], row[1], row[2], None if row[3] is None else int(row[3]), row[4],
                     int(row[5]), None if row[6] is None else int(row[6]), bool(row[7]))


class MediaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(self, media_id: str, owner: str, now_ms: int, expires_ms: int) -> None:
        """A media id from ``/v1/create``: owned, empty, usable until ``expires_ms``."""
        await self._db.execute(
            "reserve_media",
            "INSERT INTO local_media (media_id, owner, created_ts, unused_expires_ts, quarantined)"
            " VALUES (?, ?, ?, ?, 0)",
            media_id, owner, now_ms, expires_ms,
        )

    async def count_pending(self, owner: str, now_ms: int) -> tuple[int, int | None]:
        """How many unexpired reserved ids ``owner`` holds, and when the first expires."""
        row = await self._db.query_one(
            "count_pending_media",
            "SELECT COUNT(*), MIN(unused_expires_ts) FROM local_media"
            " WHERE owner = ? AND size IS NULL AND unused_expires_ts > ?",
            owner, now_ms,
        )
        if row is None:
            return 0, None
        return int(row[0]), None if row[1] is None else int(row[1])

    async def insert_uploaded(self, info: MediaInfo) -> None:
        await self._db.execute(
            "insert_media",
            f"INSERT INTO local_media ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            info.media_id, info.owner, info.content_type, info.size, info.sha256,
            info.created_ts, None,
        )

    async def fill_reserved(self, media_id: str, content_type: str, size: int, sha256: str) -> bool:
        """Record the content of a reserved id; False if someone filled it first."""
        n = await self._db.execute(
            "fill_reserved_media",
            "UPDATE local_media SET content_type = ?, size = ?, sha256 = ?, unused_expires_ts = NULL"
            " WHERE media_id = ? AND size IS NULL",
            content_type, size, sha256, media_id,
        )
        return n == 1

    async def get(self, media_id: str) -> MediaInfo | None:
        row = await self._db.query_one(
            "get_media", f"SELECT {_COLUMNS} FROM local_media WHERE media_id = ?", media_id)
        return _row(row) if row else None

    async def used_bytes(self, owner: str) -> int:
        """Bytes of uploaded content ``owner`` holds (quota accounting)."""
        row = await self._db.query_one(
            "media_used_bytes",
            "SELECT COALESCE(SUM(size), 0) FROM local_media WHERE owner = ? AND size IS NOT NULL",
            owner,
        )
        return int(row[0]) if row else 0

    async def set_quarantined(self, media_id: str, quarantined: bool) -> bool:
        n = await self._db.execute(
            "quarantine_media", "UPDATE local_media SET quarantined = ? WHERE media_id = ?",
            1 if quarantined else 0, media_id,
        )
        return n == 1

    async def get_thumbnail(self, media_id: str, width: int, height: int,
                            method: str) -> ThumbnailInfo | None:
        row = await self._db.query_one(
            "get_media_thumbnail",
            "SELECT width, height, method, content_type, size FROM local_media_thumbnails"
            " WHERE media_id = ? AND width = ? AND height = ? AND method = ?",
            media_id, width, height, method,
        )
        return ThumbnailInfo(int(row[0]), int(row[1]), row[2], row[3], int(row[4])) if row else None

    async def add_thumbnail(self, media_id: str, thumb: ThumbnailInfo) -> None:
        """Record a generated thumbnail; a concurrent identical insert is harmless."""

        def _add(txn: Txn) -> None:
            exists = txn.query_one(
                "SELECT 1 FROM local_media_thumbnails"
                " WHERE media_id = ? AND width = ? AND height = ? AND method = ?",
                (media_id, thumb.width, thumb.height, thumb.method),
            )
            if exists is None:
                txn.execute(
                    "INSERT INTO local_media_thumbnails"
                    " (media_id, width, height, method, content_type, size) VALUES (?, ?, ?, ?, ?, ?)",
                    (media_id, thumb.width, thumb.height, thumb.method, thumb.content_type, thumb.size),
                )

        await self._db.run("add_media_thumbnail", _add)
