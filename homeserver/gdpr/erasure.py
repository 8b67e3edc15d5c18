"""GDPR erasure at once, and the purge job it schedules.

``/account/deactivate`` with ``erase: true`` and the admin deactivation with ``erase``
both go through :meth:`homeserver.handlers.account.AccountHandler.deactivate`, which
locks the account first (:meth:`ErasureHandler.lock`), revokes sessions, deletes
devices, marks the user erased (from then on their events are served pruned to anyone
who was not in the room when they were sent, and to everyone once the purge has
rewritten them), leaves rooms and rejects invites, unbinds 3PIDs, clears the profile,
and then calls :meth:`ErasureHandler.erase_now`: keys (device, one-time, fallback,
cross-signing), key backups, pushers, account data, filters, push rules and presence
are deleted now, and a purge job (homeserver/gdpr/erasure_purge.py) is scheduled after
``gdpr.erasure_grace_period`` (default 30 days; 0 runs it at once).

:class:`ErasureJobSource` lists the jobs for the admin background-jobs API.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.gdpr.erasure_purge import STEPS, ErasurePurge
from homeserver.handlers.directory import RoomStatsUpdater
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.jobs.listing import JobInfo
from homeserver.media.backends import MediaBackend
from plugins.host import PluginHost
from storage.database import Database
from storage.stores.all_stores import Stores
from storage.stores.erasure import ErasureJob, ErasureStore

JOB_PREFIX = "erase_"
KIND = "erasure"


class ErasureHandler:
    def __init__(self, clock: Clock, store: ErasureStore, purge: ErasurePurge,
                 grace_period_s: float) -> None:
        self._clock = clock
        self._store = store
        self._purge = purge
        self.grace_period_s = grace_period_s

    async def lock(self, user_id: str) -> None:
        """First thing on erasure: no login or request of the account from now on."""
        await self._store.lock(user_id)

    async def erase_now(self, user_id: str, requested_by: str) -> ErasureJob:
        """Delete keys, backups and settings now; schedule (or find) the purge job."""
        await self._store.delete_keys_and_settings(user_id)
        now = self._clock.time_msec()
        job = await self._store.create_job(
            JOB_PREFIX + secrets.token_urlsafe(12), user_id, requested_by, now,
            now + int(self.grace_period_s * 1000), len(STEPS))
        return job

    def start_due(self) -> None:
        """With no grace period, run the purge now. Called once the erasure's own audit
        entries are written (the purge pseudonymises them, so it must come after)."""
        if self.grace_period_s <= 0:
            self._purge.kick()


def job_info(job: ErasureJob) -> JobInfo:
    """A purge job as the admin background-jobs listing shows it (the target is the
    pseudonym once the job has completed)."""
    return JobInfo(
        job_id=job.job_id, kind=KIND, status=job.status, created_ts=job.created_ts,
        updated_ts=job.updated_ts, target=job.user_id, requested_by=job.requested_by,
        progress={"done": job.step, "total": job.steps_total, "items": job.items,
                  "run_after_ts": job.run_after_ts},
        error=job.error)


class ErasureJobSource:
    """The ``erasure`` :class:`~homeserver.jobs.listing.JobSource`."""

    kind = KIND

    def __init__(self, store: ErasureStore) -> None:
        self._store = store

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        return [job_info(j) for j in await self._store.list_jobs(limit, before_ts)]

    async def get_job(self, job_id: str) -> JobInfo | None:
        if not job_id.startswith(JOB_PREFIX):
            return None
        job = await self._store.get_job(job_id)
        return job_info(job) if job is not None else None


@dataclass(frozen=True)
class Erasure:
    handler: ErasureHandler
    purge: ErasurePurge
    jobs: ErasureJobSource
    store: ErasureStore


def build_erasure(config: Config, clock: Clock, db: Database, stores: Stores,
                  backend: MediaBackend, plugins: PluginHost,
                  audit: SecurityEventRecorder, creation: EventCreationHandler) -> Erasure:
    """Wired in homeserver/app.py: ``account.erasure = handler``; ``purge.start()``."""
    store = ErasureStore(db)
    stats = RoomStatsUpdater(creation, stores.room_directory)
    purge = ErasurePurge(clock, store, stores.events, stores.media, backend, plugins, audit,
                         config.data_dir, refresh_room=stats.refresh)
    handler = ErasureHandler(clock, store, purge, config.gdpr.erasure_grace_period_s)
    return Erasure(handler, purge, ErasureJobSource(store), store)
