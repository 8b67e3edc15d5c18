"""One listing of background jobs across features (admin ``background_jobs`` API).

Each feature (history purge, room shutdown, GDPR export, erasure, retention...) keeps its
jobs in its own table with its own resumable runner; it exposes a :class:`JobSource` that
maps its rows to :class:`JobInfo`. The :class:`JobRegistry` merges the sources so an admin
sees every job in one place without any feature knowing about the others. Job ids are
unique across kinds because every kind prefixes its ids.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

STATUSES = ("scheduled", "active", "complete", "failed")
MAX_SAME_MS = 10_000  # jobs created in one millisecond that one page can show


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    kind: str  # "purge_history", "room_shutdown", "gdpr_export", "erasure", "retention", ...
    status: str  # "scheduled" | "active" | "complete" | "failed"
    created_ts: int
    updated_ts: int | None = None
    target: str | None = None  # room id or user id the job is about
    requested_by: str | None = None
    progress: dict[str, int] = field(default_factory=dict)  # e.g. {"done": 10, "total": 40}
    error: str | None = None


class JobSource(Protocol):
    kind: str

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        """At most ``limit`` jobs created strictly before ``before_ts`` (if given), newest
        first."""
        ...

    async def get_job(self, job_id: str) -> JobInfo | None: ...


class JobRegistry:
    """Every feature's :class:`JobSource`, merged newest first."""

    def __init__(self) -> None:
        self._sources: dict[str, JobSource] = {}

    def add_source(self, source: JobSource) -> None:
        if source.kind in self._sources:
            raise ValueError(f"duplicate job source kind {source.kind!r}")
        self._sources[source.kind] = source

    @property
    def kinds(self) -> list[str]:
        return sorted(self._sources)

    async def list_jobs(self, limit: int, before_ts: int | None,
                        kind: str | None) -> list[JobInfo]:
        """At most ``limit`` jobs (of ``kind`` if given) created before ``before_ts``,
        newest first; ties broken by job id so pages are stable."""
        if kind is not None:
            source = self._sources.get(kind)
            sources = [source] if source is not None else []
        else:
            sources = list(self._sources.values())
        lists = []
        for source in sources:
            jobs = await source.list_jobs(limit, before_ts)
            lists.append(sorted(jobs, key=_order))
        return list(heapq.merge(*lists, key=_order))[:limit]

    async def page(self, limit: int, before_ts: int | None,
                   kind: str | None) -> tuple[list[JobInfo], int | None]:
        """A page for the listing endpoint: up to ``limit`` jobs and the ``before_ts`` of
        the next page (None: no more). Pages are cut between two creation times, so jobs
        created in the same millisecond never straddle a boundary and none is lost or
        repeated; a page may hold more than ``limit`` jobs only when that many share one
        millisecond (they are all shown, up to :data:`MAX_SAME_MS`)."""
        jobs = await self.list_jobs(limit + 1, before_ts, kind)
        if len(jobs) <= limit:
            return jobs, None
        cut_ts = jobs[limit].created_ts
        kept = [j for j in jobs[:limit] if j.created_ts > cut_ts]
        if kept:
            return kept, cut_ts + 1  # the next page starts with the cut millisecond
        fetch = limit + 1
        while True:  # the whole page is one millisecond: show all of it, then move on
            fetch = min(fetch * 2, MAX_SAME_MS + 1)
            jobs = await self.list_jobs(fetch, cut_ts + 1, kind)
            same = [j for j in jobs if j.created_ts == cut_ts]
            if len(same) < len(jobs) or len(jobs) < fetch or fetch > MAX_SAME_MS:
                more = len(same) < len(jobs) or len(jobs) >= fetch
                return same[:MAX_SAME_MS], cut_ts if more else None

    async def get_job(self, job_id: str) -> JobInfo | None:
        for source in self._sources.values():
            job = await source.get_job(job_id)
            if job is not None:
                return job
        return None


def _order(job: JobInfo) -> tuple[int, str]:
    return (-job.created_ts, job.job_id)
