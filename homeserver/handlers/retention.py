"""Message retention policies (Synapse's ``retention``): a server default and per-room
``m.room.retention`` state (``max_lifetime``, ``min_lifetime`` in ms) decide how long a
room's history is kept; periodic purge jobs delete what is older.

* A room's lifetimes are its state's, else the default policy's, each clamped into
  ``[allowed_lifetime_min, allowed_lifetime_max]``. History is kept for the larger of
  the two (a room promising a minimum lifetime keeps its messages that long).
* Each configured purge job runs every ``interval`` over the rooms whose max lifetime is
  in ``(shortest_max_lifetime, longest_max_lifetime]`` and purges every event sent
  before ``now - max_lifetime`` with the admin purge's batches
  (:mod:`storage.stores.purge_history`): message events are deleted (local ones too),
  state events are only taken out of the timeline, so the room's state, its name and
  everything needed to join stay; the room's latest event and forward extremities are
  never touched.
* Each run is a row (``retention_runs``) advanced room by room (room id order); a run a
  stopped process left ``active`` is resumed from its cursor at start-up. Runs are
  listed as background jobs of kind ``retention`` (:class:`RetentionJobSource`).

Events past their lifetime are served until the next run purges them (as Synapse).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.gdpr.retention_config import PurgeJobConfig, RetentionConfig
from homeserver.http.errors import Codes, MatrixError
from homeserver.jobs.listing import JobInfo
from storage.stores.events import EventStore
from storage.stores.purge_history import PurgeHistoryStore
from storage.stores.retention import RetentionRun, RetentionStore

logger = logging.getLogger(__name__)

KIND = "retention"
ID_PREFIX = "retention_"
ROOMS_PER_STEP = 50
BATCH_SIZE = 500
# Finished runs stay listed for a week.
RUN_RETENTION_MS = 7 * 86400 * 1000
FAILED_MESSAGE = "The retention run failed; see the server log"
MAX_LIFETIME_MS = 2**53 - 1


def validate_retention_content(content: Mapping[str, Any]) -> None:
    """``m.room.retention`` content a client may send (Synapse's checks): lifetimes are
    non-negative integers (ms) and ``min_lifetime`` is not above ``max_lifetime``."""
    values = {}
    for key in ("min_lifetime", "max_lifetime"):
        value = content.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 0 <= value <= MAX_LIFETIME_MS:
            raise MatrixError(400, f"'{key}' must be a non-negative integer (milliseconds)",
                              Codes.BAD_JSON)
        values[key] = value
    if "min_lifetime" in values and "max_lifetime" in values and \
            values["min_lifetime"] > values["max_lifetime"]:
        raise MatrixError(400, "'min_lifetime' can't be greater than 'max_lifetime'",
                          Codes.BAD_JSON)


def _lifetime(content: Mapping[str, Any] | None, key: str) -> int | None:
    value = (content or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class RetentionHandler:
    def __init__(self, config: RetentionConfig, server_name: str, clock: Clock,
                 store: RetentionStore, purge: PurgeHistoryStore, events: EventStore,
                 batch_size: int = BATCH_SIZE) -> None:
        self._events = events
        self._config = config
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._purge = purge
        self._batch_size = batch_size
        self._lock = defer.DeferredLock()  # one run at a time in this process
        self._loops: list[LoopingCall] = []
        self._running: set[defer.Deferred[Any]] = set()
        self._stopping = False

    # ---- policy

    def _clamp(self, value: int | None) -> int | None:
        if value is None:
            return None
        low, high = self._config.allowed_lifetime_min_ms, self._config.allowed_lifetime_max_ms
        if low is not None:
            value = max(value, low)
        if high is not None:
            value = min(value, high)
        return value

    def policy_for(self, content: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
        """(min_lifetime, max_lifetime) in ms of a room with this ``m.room.retention``
        content (None: no state), defaults applied and clamped."""
        min_lt = _lifetime(content, "min_lifetime")
        max_lt = _lifetime(content, "max_lifetime")
        if min_lt is None:
            min_lt = self._config.default_min_lifetime_ms
        if max_lt is None:
            max_lt = self._config.default_max_lifetime_ms
        return self._clamp(min_lt), self._clamp(max_lt)

    def kept_for(self, content: Mapping[str, Any] | None) -> int | None:
        """How long (ms) this room's history is kept; None: forever."""
        min_lt, max_lt = self.policy_for(content)
        if max_lt is None:
            return None
        return max(max_lt, min_lt) if min_lt is not None else max_lt

    async def validate_event(self, event: Event, _snapshot: Any) -> None:
        """State validator for ``m.room.retention`` (the one event path)."""
        validate_retention_content(event.content)

    # ---- scheduling

    def start(self) -> None:
        """One looping call per purge job, first run one interval from now."""
        for job in self._config.purge_jobs:
            loop = LoopingCall(self._scheduled, job)
            loop.clock = self._clock._time  # noqa: SLF001 (the clock's own IReactorTime)
            loop.start(job.interval_s, now=False)
            self._loops.append(loop)

    async def stop(self) -> None:
        self._stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for d in list(self._running):
            try:
                await d
            except Exception:  # noqa: BLE001 (already logged by the run)
                pass

    def _scheduled(self, job: PurgeJobConfig) -> None:
        self._track(defer.ensureDeferred(self.run_job(job)))

    def _track(self, d: defer.Deferred[Any]) -> None:
        self._running.add(d)
        d.addErrback(lambda f: logger.error("retention run failed: %s", f.getErrorMessage()))
        d.addBoth(lambda _: self._running.discard(d))

    async def resume_pending(self) -> None:
        """Resume the runs a stopped process left ``active`` (in the background)."""
        for run in await self._store.active_runs():
            job = PurgeJobConfig(run.shortest_max_lifetime, run.longest_max_lifetime)
            logger.info("resuming retention run %s after room %s", run.run_id,
                        run.last_room_id)
            self._track(defer.ensureDeferred(self._locked_run(run.run_id, job,
                                                              run.last_room_id)))

    async def run_job(self, job: PurgeJobConfig) -> str:
        """Start and finish one run of ``job``; returns its id."""
        now = self._clock.time_msec()
        await self._store.delete_finished_before(now - RUN_RETENTION_MS)
        run_id = ID_PREFIX + secrets.token_hex(8)
        await self._store.create_run(run_id, job.shortest_max_lifetime_ms,
                                     job.longest_max_lifetime_ms,
                                     await self._store.count_rooms(), now)
        await self._locked_run(run_id, job, None)
        return run_id

    async def _locked_run(self, run_id: str, job: PurgeJobConfig, cursor: str | None) -> None:
        await self._lock.acquire()
        try:
            await self._run(run_id, job, cursor)
        finally:
            self._lock.release()

    async def _run(self, run_id: str, job: PurgeJobConfig, cursor: str | None) -> None:
        try:
            while not self._stopping:
                rooms = await self._store.rooms_after(cursor, ROOMS_PER_STEP)
                if not rooms:
                    break
                purged = deleted = hidden = 0
                policies = await self._events.get_events([e for _, e in rooms if e])
                for room_id, policy_id in rooms:
                    policy = policies.get(policy_id) if policy_id else None
                    content = policy.content if policy is not None else None
                    result = await self._purge_room(room_id, content, job)
                    if result is not None and result != (0, 0):
                        purged += 1
                        deleted += result[0]
                        hidden += result[1]
                cursor = rooms[-1][0]
                await self._store.add_progress(run_id, cursor, len(rooms), purged, deleted,
                                               hidden, self._clock.time_msec())
            if not self._stopping:  # a stopped run stays active and resumes at start-up
                await self._store.finish_run(run_id, "complete", None,
                                             self._clock.time_msec())
        except Exception:
            logger.exception("retention run %s failed", run_id)
            await self._store.finish_run(run_id, "failed", FAILED_MESSAGE,
                                         self._clock.time_msec())

    def _in_job(self, max_lifetime: int, job: PurgeJobConfig) -> bool:
        shortest, longest = job.shortest_max_lifetime_ms, job.longest_max_lifetime_ms
        return (shortest is None or max_lifetime > shortest) and \
            (longest is None or max_lifetime <= longest)

    async def _purge_room(self, room_id: str, content: dict[str, Any] | None,
                          job: PurgeJobConfig) -> tuple[int, int] | None:
        """Purge the room's expired history if ``job`` covers it: (deleted, hidden)."""
        _min_lt, max_lt = self.policy_for(content)
        kept = self.kept_for(content)
        if max_lt is None or kept is None or not self._in_job(max_lt, job):
            return None
        cutoff_ts = self._clock.time_msec() - kept
        before = await self._purge.first_position_at_or_after_ts(room_id, cutoff_ts)
        if before is None:  # everything is older: all but the latest event
            before = await self._purge.latest_position(room_id)
        if before is None:
            return None
        deleted = hidden = 0
        while not self._stopping:
            batch = await self._purge.purge_batch(room_id, before, self._server_name, True,
                                                  self._batch_size)
            if batch.examined == 0:
                break
            deleted += batch.deleted
            hidden += batch.hidden
        if deleted or hidden:
            logger.info("retention: room %s purged before %d: %d deleted, %d hidden",
                        room_id, cutoff_ts, deleted, hidden)
        return deleted, hidden


class RetentionJobSource:
    """Retention runs as background jobs (homeserver/jobs/listing.py)."""

    kind = KIND

    def __init__(self, store: RetentionStore) -> None:
        self._store = store

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        return [_info(r) for r in await self._store.list_runs(limit, before_ts)]

    async def get_job(self, job_id: str) -> JobInfo | None:
        if not job_id.startswith(ID_PREFIX) or len(job_id) > 64:
            return None
        run = await self._store.get_run(job_id)
        return _info(run) if run is not None else None


def _info(run: RetentionRun) -> JobInfo:
    return JobInfo(
        job_id=run.run_id, kind=KIND, status=run.status, created_ts=run.created_ts,
        updated_ts=run.updated_ts, target=None, requested_by=None,
        progress={"done": run.rooms_done, "total": run.rooms_total,
                  "rooms_purged": run.rooms_purged, "events_deleted": run.events_deleted,
                  "events_hidden": run.events_hidden},
        error=run.error)


def build_retention(config: Any, clock: Clock, db: Any, stores: Any,
                    rooms: Any) -> tuple[RetentionHandler, RetentionJobSource]:
    """The retention handler and its job source; ``m.room.retention`` content is
    validated on send whether or not retention is enabled (as Synapse). Call
    :meth:`RetentionHandler.start` and ``resume_pending`` when enabled."""
    store = RetentionStore(db)
    handler = RetentionHandler(config.retention, config.server_name, clock, store,
                               stores.purge_history, stores.events)
    rooms.event_creation.state_validators.setdefault("m.room.retention",
                                                     handler.validate_event)
    return handler, RetentionJobSource(store)
