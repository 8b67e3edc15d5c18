"""Job sources for features whose job tables predate the listing: history purges
(homeserver/handlers/purge_history.py) and GDPR exports (homeserver/gdpr/export.py).
Room shutdowns have their own source next to their runner
(:class:`homeserver.handlers.room_shutdown.RoomShutdownJobSource`)."""

from __future__ import annotations

from homeserver.jobs.listing import JobInfo
from storage.stores.background_jobs import BackgroundJobStore, JobRow

_PURGE_STATUS = {"active": "active", "complete": "complete", "failed": "failed"}
_EXPORT_STATUS = {"queued": "scheduled", "running": "active", "complete": "complete",
                  "failed": "failed"}


def _info(row: JobRow, kind: str, statuses: dict[str, str]) -> JobInfo:
    return JobInfo(job_id=row.job_id, kind=kind, status=statuses.get(row.status, "failed"),
                   created_ts=row.created_ts, updated_ts=row.finished_ts, target=row.target,
                   requested_by=row.requested_by, progress=dict(row.counters), error=row.error)


class PurgeHistoryJobSource:
    kind = "purge_history"

    def __init__(self, store: BackgroundJobStore) -> None:
        self._store = store

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        return [_info(r, self.kind, _PURGE_STATUS)
                for r in await self._store.purge_jobs(limit, before_ts)]

    async def get_job(self, job_id: str) -> JobInfo | None:
        row = await self._store.purge_job(job_id)
        return _info(row, self.kind, _PURGE_STATUS) if row else None


class GdprExportJobSource:
    kind = "gdpr_export"

    def __init__(self, store: BackgroundJobStore) -> None:
        self._store = store

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        return [_info(r, self.kind, _EXPORT_STATUS)
                for r in await self._store.export_jobs(limit, before_ts)]

    async def get_job(self, job_id: str) -> JobInfo | None:
        row = await self._store.export_job(job_id)
        return _info(row, self.kind, _EXPORT_STATUS) if row else None
