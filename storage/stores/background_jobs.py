"""Read-only paging over job tables other features own (history purges, GDPR exports)
for the background jobs listing (:mod:`homeserver.jobs.sources`).

The features keep writing their own tables through their own stores; this only reads
the columns a job listing shows (never a download token or an archive path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database


@dataclass(frozen=True)
class JobRow:
    job_id: str
    target: str
    requested_by: str
    status: str
    error: str | None
    created_ts: int
    finished_ts: int | None
    counters: dict[str, int]


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _purge(r: Sequence[Any]) -> JobRow:
    return JobRow(r[0], r[1], r[2], r[3], r[4], int(r[5]), _int(r[6]),
                  {"deleted_events": int(r[7]), "hidden_events": int(r[8])})


def _export(r: Sequence[Any]) -> JobRow:
    return JobRow(r[0], r[1], r[2], r[3], r[4], int(r[5]), _int(r[6]),
                  {"done": int(r[7] or 0), "total": int(r[8] or 0), "items": int(r[9] or 0)})


_PURGE = ("SELECT purge_id, room_id, requested_by, status, error, created_ts, finished_ts,"
          " deleted_events, hidden_events FROM purge_history_jobs")
_EXPORT = ("SELECT x.export_id, x.user_id, x.requested_by, x.status, x.error, x.created_ts,"
           " x.finished_ts,"
           " (SELECT COUNT(*) FROM gdpr_export_sections s WHERE s.export_id = x.export_id"
           "   AND s.done = ?),"
           " (SELECT COUNT(*) FROM gdpr_export_sections s WHERE s.export_id = x.export_id),"
           " (SELECT SUM(s.items) FROM gdpr_export_sections s WHERE s.export_id = x.export_id)"
           " FROM gdpr_exports x")


class BackgroundJobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def purge_jobs(self, limit: int, before_ts: int | None) -> list[JobRow]:
        where, args = (" WHERE created_ts < ?", [before_ts]) if before_ts is not None \
            else ("", [])
        rows = await self._db.query(
            "jobs_purge_list", f"{_PURGE}{where} ORDER BY created_ts DESC, purge_id LIMIT ?",
            *args, limit)
        return [_purge(r) for r in rows]

    async def purge_job(self, job_id: str) -> JobRow | None:
        row = await self._db.query_one("jobs_purge_get", f"{_PURGE} WHERE purge_id = ?", job_id)
        return _purge(row) if row else None

    async def export_jobs(self, limit: int, before_ts: int | None) -> list[JobRow]:
        where, args = (" WHERE x.created_ts < ?", [before_ts]) if before_ts is not None \
            else ("", [])
        rows = await self._db.query(
            "jobs_export_list",
            f"{_EXPORT}{where} ORDER BY x.created_ts DESC, x.export_id LIMIT ?",
            True, *args, limit)
        return [_export(r) for r in rows]

    async def export_job(self, job_id: str) -> JobRow | None:
        row = await self._db.query_one("jobs_export_get", f"{_EXPORT} WHERE x.export_id = ?",
                                       True, job_id)
        return _export(row) if row else None
