"""GDPR data exports: the job rows (``gdpr_exports``), a cursor per section of each job
(``gdpr_export_sections``), and the batched reads an export needs that no other store
offers (a user's own events in stream order, their media, audit entries about them).

What the job does with these is in :mod:`homeserver.gdpr.export`. Every read is keyed
by the user being exported and bounded by ``limit``, so a job never holds the database
(on SQLite, its only connection) for long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn
from storage.stores.security_events import _COLS as _AUDIT_COLS
from storage.stores.security_events import SecurityEvent, _event

_JOB_COLS = ("export_id, user_id, requested_by, status, error, archive_size, created_ts,"
             " finished_ts, expires_ts")


@dataclass(frozen=True)
class ExportJob:
    export_id: str
    user_id: str  # whose data
    requested_by: str  # the user themselves, or an admin
    status: str  # queued | running | complete | failed
    error: str | None
    archive_size: int | None
    created_ts: int
    finished_ts: int | None
    expires_ts: int | None


@dataclass(frozen=True)
class SectionState:
    section: str
    cursor: str | None
    batches: int
    items: int
    done: bool


@dataclass(frozen=True)
class MediaRow:
    media_id: str
    content_type: str | None
    size: int | None
    sha256: str | None
    created_ts: int
    quarantined: bool


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _job(r: tuple[Any, ...]) -> ExportJob:
    return ExportJob(r[0], r[1], r[2], r[3], r[4], _int(r[5]), int(r[6]), _int(r[7]),
                     _int(r[8]))


class GdprExportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- jobs ----------------------------------------------------------------------------

    async def create_job(self, export_id: str, user_id: str, requested_by: str,
                         sections: list[str], now_ms: int) -> None:
        def _create(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO gdpr_exports (export_id, user_id, requested_by, status,"
                " created_ts) VALUES (?, ?, ?, ?, ?)",
                (export_id, user_id, requested_by, "queued", now_ms))
            txn.executemany(
                "INSERT INTO gdpr_export_sections (export_id, section, done) VALUES (?, ?, ?)",
                [(export_id, s, False) for s in sections])

        await self._db.run("gdpr_export_create", _create)

    async def get_job(self, export_id: str) -> ExportJob | None:
        row = await self._db.query_one(
            "gdpr_export_get", f"SELECT {_JOB_COLS} FROM gdpr_exports WHERE export_id = ?",
            export_id)
        return _job(row) if row else None

    async def active_job_for_user(self, user_id: str) -> ExportJob | None:
        """A queued or running export of ``user_id`` (one at a time per user)."""
        row = await self._db.query_one(
            "gdpr_export_active",
            f"SELECT {_JOB_COLS} FROM gdpr_exports WHERE user_id = ? AND status IN (?, ?)"
            " ORDER BY created_ts LIMIT 1", user_id, "queued", "running")
        return _job(row) if row else None

    async def unfinished_jobs(self) -> list[ExportJob]:
        """Jobs left queued or running (to resume at start-up), oldest first."""
        rows = await self._db.query(
            "gdpr_export_unfinished",
            f"SELECT {_JOB_COLS} FROM gdpr_exports WHERE status IN (?, ?) ORDER BY created_ts",
            "queued", "running")
        return [_job(r) for r in rows]

    async def set_status(self, export_id: str, status: str) -> None:
        await self._db.execute(
            "gdpr_export_status", "UPDATE gdpr_exports SET status = ? WHERE export_id = ?",
            status, export_id)

    async def complete(self, export_id: str, size: int, now_ms: int, expires_ms: int) -> None:
        await self._db.execute(
            "gdpr_export_complete",
            "UPDATE gdpr_exports SET status = ?, archive_size = ?, finished_ts = ?,"
            " expires_ts = ? WHERE export_id = ?",
            "complete", size, now_ms, expires_ms, export_id)

    async def fail(self, export_id: str, error: str, now_ms: int, expires_ms: int) -> None:
        await self._db.execute(
            "gdpr_export_fail",
            "UPDATE gdpr_exports SET status = ?, error = ?, finished_ts = ?, expires_ts = ?,"
            " token_hash = NULL WHERE export_id = ?",
            "failed", error, now_ms, expires_ms, export_id)

    async def expired_jobs(self, now_ms: int, limit: int = 100) -> list[ExportJob]:
        rows = await self._db.query(
            "gdpr_export_expired",
            f"SELECT {_JOB_COLS} FROM gdpr_exports WHERE expires_ts IS NOT NULL"
            " AND expires_ts <= ? ORDER BY expires_ts LIMIT ?", now_ms, limit)
        return [_job(r) for r in rows]

    async def delete_job(self, export_id: str) -> None:
        def _delete(txn: Txn) -> None:
            txn.execute("DELETE FROM gdpr_export_sections WHERE export_id = ?", (export_id,))
            txn.execute("DELETE FROM gdpr_exports WHERE export_id = ?", (export_id,))

        await self._db.run("gdpr_export_delete", _delete)

    # -- the download link ---------------------------------------------------------------

    async def set_token(self, export_id: str, token_hash: str, expires_ms: int) -> bool:
        """Replace the link's token (a newer link invalidates the older one)."""
        return bool(await self._db.execute(
            "gdpr_export_set_token",
            "UPDATE gdpr_exports SET token_hash = ?, token_expires_ts = ?"
            " WHERE export_id = ? AND status = ?",
            token_hash, expires_ms, export_id, "complete"))

    async def consume_token(self, export_id: str, token_hash: str, now_ms: int) -> bool:
        """Spend the token if it is the current, unexpired one of a complete export."""
        return bool(await self._db.execute(
            "gdpr_export_consume_token",
            "UPDATE gdpr_exports SET token_hash = NULL WHERE export_id = ? AND token_hash = ?"
            " AND token_expires_ts > ? AND status = ?",
            export_id, token_hash, now_ms, "complete"))

    # -- sections ------------------------------------------------------------------------

    async def sections(self, export_id: str) -> list[SectionState]:
        rows = await self._db.query(
            "gdpr_export_sections",
            "SELECT section, cursor, batches, items, done FROM gdpr_export_sections"
            " WHERE export_id = ?", export_id)
        return [SectionState(r[0], r[1], int(r[2]), int(r[3]), bool(r[4])) for r in rows]

    async def advance_section(self, export_id: str, section: str, cursor: str | None,
                              items: int, done: bool) -> None:
        """Record one written batch (its part file is already on disk)."""
        await self._db.execute(
            "gdpr_export_advance",
            "UPDATE gdpr_export_sections SET cursor = ?, batches = batches + 1,"
            " items = items + ?, done = ? WHERE export_id = ? AND section = ?",
            cursor, items, done, export_id, section)

    # -- what is exported ----------------------------------------------------------------

    async def own_event_ids(self, user_id: str, after_stream: int,
                            limit: int) -> list[tuple[str, int]]:
        """(event id, stream ordering) of events ``user_id`` sent, after a position."""
        rows = await self._db.query(
            "gdpr_export_events",
            "SELECT event_id, stream_ordering FROM events WHERE sender = ?"
            " AND stream_ordering > ? ORDER BY stream_ordering LIMIT ?",
            user_id, after_stream, limit)
        return [(r[0], int(r[1])) for r in rows]

    async def media_of_owner(self, owner: str, after_media_id: str,
                             limit: int) -> list[MediaRow]:
        """Media ``owner`` uploaded (reserved-but-empty ids included), by media id."""
        rows = await self._db.query(
            "gdpr_export_media",
            "SELECT media_id, content_type, size, sha256, created_ts, quarantined"
            " FROM local_media WHERE owner = ? AND media_id > ? ORDER BY media_id LIMIT ?",
            owner, after_media_id, limit)
        return [MediaRow(r[0], r[1], _int(r[2]), r[3], int(r[4]), bool(r[5]))
                for r in rows]

    async def audit_entries_about(self, user_id: str, after_seq: int,
                                  limit: int) -> list[SecurityEvent]:
        """Chained audit entries whose actor or target is ``user_id``, in seq order."""
        rows = await self._db.query(
            "gdpr_export_audit",
            f"SELECT {_AUDIT_COLS} FROM security_events WHERE seq > ?"
            " AND (user_id = ? OR target = ?) ORDER BY seq LIMIT ?",
            after_seq, user_id, user_id, limit)
        return [_event(r) for r in rows]
