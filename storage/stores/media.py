"""The ``local_media``, ``local_media_thumbnails`` and ``quarantined_media_hashes`` tables.

Metadata only: owner, size, sha256, content type, created time and the quarantine
flag. The filename a client sends is never stored (data minimisation); downloads use
the name in the URL, if any.

Quarantine is by id and by content: quarantining a media id also records its sha256,
and a row reads as quarantined when its own flag is set *or* its hash is recorded, so
the same bytes under another id (uploaded before or after) are never served.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn

_COLUMNS = "media_id, owner, content_type, size, sha256, created_ts, unused_expires_ts, quarantined"
# The effective quarantine state: the row's flag or its content's hash.
_HASH_QUARANTINED = ("EXISTS (SELECT 1 FROM quarantined_media_hashes h"
                     " WHERE h.sha256 = local_media.sha256)")
_READ_COLUMNS = ("media_id, owner, content_type, size, sha256, created_ts, unused_expires_ts,"
                 f" CASE WHEN quarantined = 1 OR {_HASH_QUARANTINED} THEN 1 ELSE 0 END")
_THUMB_COLUMNS = "width, height, method, content_type, size"


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


def _thumb(row: tuple) -> ThumbnailInfo:  # type: ignore[type-arg]
    return ThumbnailInfo(int(row[0]), int(row[1]), row[2], row[3], int(row[4]))


# Admin listing (issue 15): Synapse's order_by names -> columns. Parley stores no upload
# name and no last access time: those sort by media id and upload time.
ADMIN_ORDER_COLUMNS: dict[str, str] = {
    "media_id": "media_id", "upload_name": "media_id", "created_ts": "created_ts",
    "last_access_ts": "created_ts", "media_length": "size", "media_type": "content_type",
    "quarantined_by": "quarantined", "safe_from_quarantine": "protected",
}


@dataclass(frozen=True)
class AdminMediaRow:
    """A media's metadata with its ``protected`` flag (safe from bulk quarantine)."""

    info: MediaInfo
    protected: bool


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
        """Insert an uploaded file; content whose hash is quarantined is stored
        quarantined (kept, as Synapse does, but never served)."""
        await self._db.execute(
            "insert_media",
            f"INSERT INTO local_media ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?,"
            " CASE WHEN EXISTS (SELECT 1 FROM quarantined_media_hashes WHERE sha256 = ?)"
            " THEN 1 ELSE 0 END",
            info.media_id, info.owner, info.content_type, info.size, info.sha256,
            info.created_ts, None, info.sha256,
        )

    async def fill_reserved(self, media_id: str, content_type: str, size: int, sha256: str) -> bool:
        """Record the content of a reserved id; False if someone filled it first."""
        n = await self._db.execute(
            "fill_reserved_media",
            "UPDATE local_media SET content_type = ?, size = ?, sha256 = ?, unused_expires_ts = NULL,"
            " quarantined = CASE WHEN quarantined = 1 OR EXISTS (SELECT 1 FROM"
            " quarantined_media_hashes WHERE sha256 = ?) THEN 1 ELSE 0 END"
            " WHERE media_id = ? AND size IS NULL",
            content_type, size, sha256, sha256, media_id,
        )
        return n == 1

    async def get(self, media_id: str) -> MediaInfo | None:
        """The media's metadata; ``quarantined`` also reflects a quarantined hash."""
        row = await self._db.query_one(
            "get_media", f"SELECT {_READ_COLUMNS} FROM local_media WHERE media_id = ?", media_id)
        return _row(row) if row else None

    async def used_bytes(self, owner: str) -> int:
        """Bytes ``owner``'s media takes (quota accounting): uploaded content plus the
        thumbnails cached for it, which are stored on the owner's behalf too."""
        row = await self._db.query_one(
            "media_used_bytes",
            "SELECT COALESCE(SUM(size), 0) + (SELECT COALESCE(SUM(t.size), 0)"
            " FROM local_media_thumbnails t JOIN local_media m ON m.media_id = t.media_id"
            " WHERE m.owner = ?) FROM local_media WHERE owner = ? AND size IS NOT NULL",
            owner, owner,
        )
        return int(row[0]) if row else 0

    async def quarantine(self, media_id: str, by: str, now_ms: int) -> list[str] | None:
        """Quarantine ``media_id`` and its content hash; returns every media id now
        quarantined through either (to drop their thumbnails), None if unknown."""

        def _quarantine(txn: Txn) -> list[str] | None:
            row = txn.query_one("SELECT sha256 FROM local_media WHERE media_id = ?", (media_id,))
            if row is None:
                return None
            sha256 = row[0]
            txn.execute("UPDATE local_media SET quarantined = 1 WHERE media_id = ?", (media_id,))
            if sha256 is None:  # reserved, no content yet
                return [media_id]
            txn.execute(
                "INSERT INTO quarantined_media_hashes (sha256, quarantined_by, quarantined_ts)"
                " VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (sha256, by, now_ms),
            )
            txn.execute("UPDATE local_media SET quarantined = 1 WHERE sha256 = ?", (sha256,))
            rows = txn.query("SELECT media_id FROM local_media WHERE sha256 = ?", (sha256,))
            return sorted({media_id, *(r[0] for r in rows)})

        return await self._db.run("quarantine_media", _quarantine)

    async def unquarantine(self, media_id: str) -> bool:
        """Lift the quarantine of ``media_id`` and of its content hash (so every copy of
        those bytes is served again); False if unknown."""

        def _unquarantine(txn: Txn) -> bool:
            row = txn.query_one("SELECT sha256 FROM local_media WHERE media_id = ?", (media_id,))
            if row is None:
                return False
            txn.execute("UPDATE local_media SET quarantined = 0 WHERE media_id = ?", (media_id,))
            if row[0] is not None:
                txn.execute("DELETE FROM quarantined_media_hashes WHERE sha256 = ?", (row[0],))
                txn.execute("UPDATE local_media SET quarantined = 0 WHERE sha256 = ?", (row[0],))
            return True

        return await self._db.run("unquarantine_media", _unquarantine)

    async def is_hash_quarantined(self, sha256: str) -> bool:
        row = await self._db.query_one(
            "is_media_hash_quarantined", "SELECT 1 FROM quarantined_media_hashes WHERE sha256 = ?",
            sha256)
        return row is not None

    async def get_thumbnail(self, media_id: str, width: int, height: int,
                            method: str) -> ThumbnailInfo | None:
        row = await self._db.query_one(
            "get_media_thumbnail",
            f"SELECT {_THUMB_COLUMNS} FROM local_media_thumbnails"
            " WHERE media_id = ? AND width = ? AND height = ? AND method = ?",
            media_id, width, height, method,
        )
        return _thumb(row) if row else None

    async def list_thumbnails(self, media_id: str) -> list[ThumbnailInfo]:
        rows = await self._db.query(
            "list_media_thumbnails",
            f"SELECT {_THUMB_COLUMNS} FROM local_media_thumbnails WHERE media_id = ?"
            " ORDER BY width, height, method",
            media_id,
        )
        return [_thumb(r) for r in rows]

    async def delete_thumbnail(self, media_id: str, thumb: ThumbnailInfo) -> None:
        await self._db.execute(
            "delete_media_thumbnail",
            "DELETE FROM local_media_thumbnails"
            " WHERE media_id = ? AND width = ? AND height = ? AND method = ?",
            media_id, thumb.width, thumb.height, thumb.method,
        )

    async def delete_media(self, media_id: str) -> bool:
        """Delete the media row and its thumbnail rows; False if unknown. A quarantined
        hash stays quarantined."""

        def _delete(txn: Txn) -> bool:
            txn.execute("DELETE FROM local_media_thumbnails WHERE media_id = ?", (media_id,))
            txn.execute("DELETE FROM local_media WHERE media_id = ?", (media_id,))
            return txn.rowcount == 1

        return await self._db.run("delete_media", _delete)

    async def add_thumbnail(self, media_id: str, thumb: ThumbnailInfo) -> None:
        """Record a generated thumbnail (a regenerated one replaces its row, so the size
        counted in the quota stays right); nothing if the media was deleted meanwhile."""
        await self._db.execute(
            "add_media_thumbnail",
            "INSERT INTO local_media_thumbnails (media_id, width, height, method, content_type, size)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM local_media WHERE media_id = ?)"
            " ON CONFLICT (media_id, width, height, method)"
            " DO UPDATE SET content_type = excluded.content_type, size = excluded.size",
            media_id, thumb.width, thumb.height, thumb.method, thumb.content_type, thumb.size,
            media_id,
        )

    # -- admin (issue 15): listings, protection, bulk selections ----------------------

    async def list_by_owner(self, owner: str, order_by: str, descending: bool, offset: int,
                            limit: int) -> tuple[list[AdminMediaRow], int]:
        """One page of ``owner``'s media (uploaded or reserved) and their count;
        ``order_by`` is a key of :data:`ADMIN_ORDER_COLUMNS`."""
        column = ADMIN_ORDER_COLUMNS[order_by]
        order = "DESC" if descending else "ASC"

        def _list(txn: Txn) -> tuple[list[AdminMediaRow], int]:
            total = txn.query_one("SELECT COUNT(*) FROM local_media WHERE owner = ?", (owner,))
            rows = txn.query(
                f"SELECT {_READ_COLUMNS}, protected FROM local_media WHERE owner = ?"
                f" ORDER BY {column} {order}, media_id {order} LIMIT ? OFFSET ?",
                (owner, limit, offset))
            return ([AdminMediaRow(_row(r), bool(r[8])) for r in rows],
                    int(total[0]) if total else 0)

        return await self._db.run("list_media_by_owner", _list)

    async def owner_media_ids(self, owner: str, include_protected: bool) -> list[str]:
        rows = await self._db.query(
            "owner_media_ids",
            "SELECT media_id FROM local_media WHERE owner = ?"
            + ("" if include_protected else " AND protected = 0") + " ORDER BY media_id",
            owner)
        return [r[0] for r in rows]

    async def unprotected(self, media_ids: list[str]) -> list[str]:
        """Those of ``media_ids`` that exist and are not protected."""
        out: list[str] = []
        for i in range(0, len(media_ids), 200):
            chunk = media_ids[i:i + 200]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "unprotected_media",
                f"SELECT media_id FROM local_media WHERE media_id IN ({marks}) AND protected = 0",
                *chunk)
            out += [r[0] for r in rows]
        return sorted(out)

    async def set_protected(self, media_id: str, protected: bool) -> bool:
        """Protect (or not) a media from the bulk quarantine calls; False if unknown."""
        n = await self._db.execute(
            "set_media_protected", "UPDATE local_media SET protected = ? WHERE media_id = ?",
            1 if protected else 0, media_id)
        return n == 1

    async def room_event_ids(self, room_id: str, after: int, limit: int
                             ) -> list[tuple[str, int]]:
        """(event id, stream ordering) of the room's non-rejected events after stream
        position ``after``, oldest first: the admin room-media listing reads them
        through the event store (whose reads open content sealed at rest)."""
        rows = await self._db.query(
            "room_event_ids_for_media",
            "SELECT event_id, stream_ordering FROM events WHERE room_id = ?"
            " AND rejected_reason IS NULL AND stream_ordering > ?"
            " ORDER BY stream_ordering LIMIT ?", room_id, after, limit)
        return [(r[0], int(r[1])) for r in rows]

    async def media_ids_before(self, before_ts: int, size_gt: int, keep_profiles: bool,
                               server_name: str, limit: int) -> list[str]:
        """Up to ``limit`` unprotected local media uploaded before ``before_ts`` and
        larger than ``size_gt`` bytes; ``keep_profiles`` skips those used as a user's
        avatar (Synapse's media/delete)."""
        sql = ("SELECT media_id FROM local_media WHERE created_ts < ? AND protected = 0"
               " AND COALESCE(size, 0) > ?")
        args: list[object] = [before_ts, size_gt]
        if keep_profiles:
            sql += " AND NOT EXISTS (SELECT 1 FROM profiles p WHERE p.avatar_url = ?"
            sql += " || local_media.media_id)"
            args.append(f"mxc://{server_name}/")
        rows = await self._db.query("media_ids_before", sql + " ORDER BY media_id LIMIT ?",
                                    *args, limit)
        return [r[0] for r in rows]
