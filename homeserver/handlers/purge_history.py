"""Purging a room's history before a point (Synapse's admin ``purge_history`` API).

The request picks a cut-off and returns a purge id at once; the purge itself runs in
the background, in short batches (:mod:`storage.stores.purge_history` says what happens
to each event), and its job row says whether it is ``active``, ``complete`` or
``failed``. Job rows live in the database so any worker can answer a status query;
they are forgotten a day after the job ends.

The cut-off is a stream position: every timeline event before it is purged, the event
at it is kept. With an event id it is that event's position; with ``purge_up_to_ts``
it is the room's first event sent at or after that time, or, if there is none, the
room's latest event (which is kept, as in Synapse). Stream order is the order
/messages pages in, so "history before X" means what a client sees before X.

One purge per room at a time (as in Synapse: 400 while one is running in this
process). Jobs still ``active`` from before this process started are marked failed on
first use (their process stopped; every batch commits on its own, so the purge can be
requested again): run the admin API on one worker, as Synapse requires for it.

A purge never waits for the room's event queue: it only touches events
older than the cut-off, never forward extremities or current state, so sends carry
on while it runs.
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass

from twisted.internet import defer

from homeserver.auth.requester import Requester
from homeserver.clock import Clock
from homeserver.handlers.admin_actions import record_admin_action
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import EventStore
from storage.stores.purge_history import PurgeHistoryStore, PurgeJob
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
# How long a finished job's status stays readable (Synapse: 24 hours).
JOB_RETENTION_MS = 24 * 3600 * 1000
_ID_CHARS = string.ascii_letters
FAILED_MESSAGE = "The purge failed; see the server log"
STOPPED_MESSAGE = "The server stopped during the purge; request it again"


@dataclass(frozen=True)
class PurgeRequest:
    room_id: str
    requested_by: str
    event_id: str | None
    up_to_ts: int | None
    delete_local_events: bool


class PurgeHistoryHandler:
    def __init__(self, server_name: str, clock: Clock, store: PurgeHistoryStore,
                 events: EventStore, rooms: RoomStore, batch_size: int | None = None,
                 audit: SecurityEventRecorder | None = None) -> None:
        self._audit = audit  # records purges an admin asks for (start_by_admin)
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._events = events
        self._rooms = rooms
        self._batch_size = batch_size or BATCH_SIZE
        self._started_ms = clock.time_msec()
        self._checked_stale = False
        self._busy: set[str] = set()  # rooms with a purge starting or running here

    async def start_by_admin(self, requester: Requester, request: PurgeRequest) -> str:
        """:meth:`start` for the admin API, recorded as an ``admin_action``."""
        purge_id = await self.start(request)
        if self._audit is not None:
            await record_admin_action(
                self._audit, requester,
                {"action": "purge_history", "room_id": request.room_id, "purge_id": purge_id,
                 "delete_local_events": request.delete_local_events})
        return purge_id

    async def start(self, request: PurgeRequest) -> str:
        """Validate, record the job and start it; returns the purge id at once."""
        await self._forget_stale_jobs()
        room_id = request.room_id
        if await self._rooms.get_room_version(room_id) is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        before = await self._cut_off(request)
        if room_id in self._busy:
            raise MatrixError(400, "History purge already in progress for this room",
                              Codes.UNKNOWN)
        self._busy.add(room_id)
        try:
            purge_id = "".join(secrets.choice(_ID_CHARS) for _ in range(16))
            await self._store.create_job(purge_id, room_id, request.requested_by, before,
                                         request.delete_local_events, self._clock.time_msec())
        except BaseException:
            self._busy.discard(room_id)
            raise
        logger.info("Starting purge %s of room %s before position %d (delete local: %s)",
                    purge_id, room_id, before, request.delete_local_events)
        # Not awaited: the request returns the id while the purge runs (_run handles
        # its own errors, so nothing is left unhandled).
        d = defer.ensureDeferred(self._run(purge_id, room_id, before,
                                           request.delete_local_events))
        d.addBoth(lambda _: self._busy.discard(room_id))
        return purge_id

    async def _cut_off(self, request: PurgeRequest) -> int:
        if request.event_id is not None:
            event = await self._events.get_event(request.event_id)
            if event is None:
                raise MatrixError(404, "Event not found", Codes.NOT_FOUND)
            if event.room_id != request.room_id:
                raise MatrixError(400, "Event is for wrong room.", Codes.INVALID_PARAM)
            return event.internal.stream_ordering or 0
        assert request.up_to_ts is not None
        position = await self._store.first_position_at_or_after_ts(request.room_id,
                                                                   request.up_to_ts)
        if position is None:
            position = await self._store.latest_position(request.room_id)
        if position is None:
            raise MatrixError(404, "There is no event to be purged", Codes.NOT_FOUND)
        return position

    async def _run(self, purge_id: str, room_id: str, before: int, delete_local: bool) -> None:
        deleted = hidden = 0
        try:
            while True:
                batch = await self._store.purge_batch(room_id, before, self._server_name,
                                                      delete_local, self._batch_size)
                if batch.examined == 0:
                    break
                deleted += batch.deleted
                hidden += batch.hidden
                await self._store.add_progress(purge_id, batch.deleted, batch.hidden)
            await self._store.finish_job(purge_id, "complete", None, self._clock.time_msec())
            logger.info("Purge %s of room %s complete: %d events deleted, %d hidden",
                        purge_id, room_id, deleted, hidden)
        except Exception:
            logger.exception("Purge %s of room %s failed", purge_id, room_id)
            try:
                await self._store.finish_job(purge_id, "failed", FAILED_MESSAGE,
                                             self._clock.time_msec())
            except Exception:
                logger.exception("Could not record the failure of purge %s", purge_id)

    async def status(self, purge_id: str) -> PurgeJob | None:
        await self._forget_stale_jobs()
        if not purge_id or len(purge_id) > 64:
            return None
        return await self._store.get_job(purge_id)

    async def _forget_stale_jobs(self) -> None:
        """Once per process: jobs left active by a stopped process are failed; and, on
        every call, finished jobs past their retention are dropped."""
        now = self._clock.time_msec()
        if not self._checked_stale:
            self._checked_stale = True
            await self._store.fail_stale_jobs(self._started_ms, STOPPED_MESSAGE, now)
        await self._store.delete_finished_before(now - JOB_RETENTION_MS)
