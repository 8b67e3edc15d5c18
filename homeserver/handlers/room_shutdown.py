"""Shutting down and purging a room (Synapse's ``DELETE /_synapse/admin/v2/rooms/{roomId}``).

The request is checked, recorded as a job row and answered with a ``delete_id`` at
once; the job runs in the background and its row says how far it got (statuses as
Synapse: ``shutting_down``, ``purging``, ``complete``, ``failed``; ``scheduled`` before it
starts). What a shutdown does, in order:

1. block the room if asked (first, so nobody re-joins while members are moved);
2. with ``new_room_user_id``: create a notice room as that (local) user, named
   ``room_name``, where members cannot speak (``users_default`` -10, as Synapse), and
   post ``message`` in it;
3. take the room out of the public room directory;
4. every local member (joined, invited or knocking; bans stay) leaves through the
   normal membership path, as themselves (as Synapse does: an admin need not be in
   the room, nor outrank anyone), with ``message`` as the reason, forgets the room
   and joins the notice room;
5. every local alias of the room is removed and blocked: creating it again is
   refused (M_FORBIDDEN), so the room cannot quietly reappear under its old name;
6. with ``purge`` (Synapse's default): every event and state row of the room is
   deleted, in batches, under the room's queue; refused while local users are still
   joined unless ``force_purge``.

Every step is idempotent and the progress (kicked users, aliases, notice room) is saved
as it goes, so a job interrupted by a restart is resumed at start-up
(:meth:`RoomShutdownHandler.resume_pending`) and finishes. Starting a job is audited
(``room_shutdown``), and so is its end (``room_shutdown_finished``).
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.auth.requester import Requester
from homeserver.clock import Clock
from homeserver.handlers.admin_actions import record_admin_action
from homeserver.handlers.admin_rooms import AdminRoomsHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.event_persister import EventPersister
from homeserver.handlers.membership import MembershipHandler
from homeserver.handlers.room_creation import RoomCreationHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.jobs.listing import JobInfo
from storage.stores.admin_rooms import AdminRoomStore, ShutdownJob
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.rooms import RoomStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

DEFAULT_ROOM_NAME = "Content Violation Notification"
DEFAULT_MESSAGE = ("Sharing illegal content on this server is not permitted and rooms in"
                   " violation will be blocked.")
ID_PREFIX = "shutdown_"
_ID_CHARS = string.ascii_letters + string.digits
PURGE_BATCH = 500
UNFINISHED = ("scheduled", "shutting_down", "purging")
FAILED_MESSAGE = "The shutdown failed; see the server log"
STILL_JOINED_MESSAGE = "Users are still joined to this room"
MAX_STATUSES = 100  # delete_status of a room: its newest jobs


@dataclass(frozen=True)
class ShutdownRequest:
    room_id: str
    new_room_user_id: str | None = None
    room_name: str | None = None
    message: str | None = None
    block: bool = False
    purge: bool = True
    force_purge: bool = False

    def params(self) -> dict[str, Any]:
        return {"new_room_user_id": self.new_room_user_id,
                "room_name": self.room_name or DEFAULT_ROOM_NAME,
                "message": self.message or DEFAULT_MESSAGE, "block": self.block,
                "purge": self.purge, "force_purge": self.force_purge}


@dataclass(frozen=True)
class ShutdownDeps:
    server_name: str
    clock: Clock
    store: AdminRoomStore
    rooms: RoomStore
    aliases: RoomAliasStore
    users: UserStore
    admin_rooms: AdminRoomsHandler
    room_creation: RoomCreationHandler
    membership: MembershipHandler
    creation: EventCreationHandler
    persister: EventPersister
    audit: SecurityEventRecorder


def empty_result() -> dict[str, Any]:
    return {"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [],
            "new_room_id": None, "purged_events": 0}


class RoomShutdownHandler:
    def __init__(self, deps: ShutdownDeps, purge_batch: int = PURGE_BATCH) -> None:
        self._d = deps
        self._store = deps.store
        self._purge_batch = purge_batch
        self._running: dict[str, defer.Deferred[None]] = {}  # delete_id -> its run
        self._starting: set[str] = set()  # rooms whose job is being recorded right now
        self._stopping = False

    # -- requests ------------------------------------------------------------------------

    async def start(self, requester: Requester, request: ShutdownRequest) -> str:
        """Check, record the job, start it; returns the delete id at once."""
        room_id = request.room_id
        known = await self._d.rooms.get_room_version(room_id) is not None
        if not known and not request.block:
            raise MatrixError(404, "Unknown room id", Codes.NOT_FOUND)
        if request.new_room_user_id is not None:
            await self._check_new_room_user(request.new_room_user_id)
        if room_id in self._starting:
            raise MatrixError(400, f"Shutdown of room {room_id} already in progress",
                              Codes.UNKNOWN)
        self._starting.add(room_id)  # two concurrent requests cannot both pass the check
        try:
            for job in await self._store.jobs_for_room(room_id, MAX_STATUSES):
                if job.status in UNFINISHED:
                    raise MatrixError(400, f"Shutdown of room {room_id} already in progress",
                                      Codes.UNKNOWN)
            delete_id = ID_PREFIX + "".join(secrets.choice(_ID_CHARS) for _ in range(20))
            await self._store.create_job(delete_id, room_id, requester.user_id,
                                         request.params(), empty_result(),
                                         self._d.clock.time_msec())
        finally:
            self._starting.discard(room_id)
        await record_admin_action(self._d.audit, requester, {
            "action": "room_shutdown", "room_id": room_id, "delete_id": delete_id,
            "block": request.block, "purge": request.purge,
            "force_purge": request.force_purge,
            "new_room_user_id": request.new_room_user_id})
        job = await self._store.get_job(delete_id)
        assert job is not None
        self._launch(job)
        return delete_id

    async def _check_new_room_user(self, user_id: str) -> None:
        if not user_id.endswith(f":{self._d.server_name}"):
            raise MatrixError(400, "User must be our own: " + user_id, Codes.INVALID_PARAM)
        user = await self._d.users.get_user(user_id)
        if user is None or user.deactivated:
            raise MatrixError(400, "new_room_user_id is not an active local user",
                              Codes.INVALID_PARAM)

    async def status(self, delete_id: str) -> ShutdownJob | None:
        if not delete_id.startswith(ID_PREFIX) or len(delete_id) > 64:
            return None
        return await self._store.get_job(delete_id)

    async def statuses_for_room(self, room_id: str) -> list[ShutdownJob]:
        return await self._store.jobs_for_room(room_id, MAX_STATUSES)

    # -- the runner ----------------------------------------------------------------------

    async def resume_pending(self) -> int:
        """At start-up: run again every job a stopped process left unfinished."""
        jobs = [j for j in await self._store.unfinished_jobs() if j.delete_id not in self._running]
        for job in jobs:
            logger.info("Resuming room shutdown %s of %s (was %s)", job.delete_id, job.room_id,
                        job.status)
            self._launch(job)
        return len(jobs)

    async def stop(self) -> None:
        """Let running jobs finish their current step, then stop (they resume later)."""
        self._stopping = True
        running = list(self._running.values())
        if running:
            await defer.DeferredList(running, consumeErrors=True)

    def _launch(self, job: ShutdownJob) -> None:
        # Not awaited: the request returns while the job runs (_run handles its errors).
        d = defer.ensureDeferred(self._run(job))
        if not d.called:
            self._running[job.delete_id] = d
            d.addBoth(lambda _: self._running.pop(job.delete_id, None))

    async def _run(self, job: ShutdownJob) -> None:
        result = {**empty_result(), **job.result}
        status = job.status
        try:
            if status in ("scheduled", "shutting_down"):
                status = "shutting_down"
                await self._save(job, status, result)
                await self._shut_down(job, result)
                if self._stopping:
                    return
            if job.params.get("purge", True):
                if await self._blocks_purge(job):
                    await self._finish(job, "failed", result, STILL_JOINED_MESSAGE)
                    return
                await self._save(job, "purging", result)
                await self._purge(job, result)
                if self._stopping:
                    return
            await self._finish(job, "complete", result, None)
        except Exception:
            logger.exception("Room shutdown %s of %s failed", job.delete_id, job.room_id)
            try:
                await self._finish(job, "failed", result, FAILED_MESSAGE)
            except Exception:
                logger.exception("Could not record the failure of shutdown %s", job.delete_id)

    async def _save(self, job: ShutdownJob, status: str, result: dict[str, Any]) -> None:
        await self._store.update_job(job.delete_id, status, result, None,
                                     self._d.clock.time_msec())

    async def _finish(self, job: ShutdownJob, status: str, result: dict[str, Any],
                      error: str | None) -> None:
        await self._store.update_job(job.delete_id, status, result, error,
                                     self._d.clock.time_msec())
        await self._d.audit.record(
            "admin_action", "success" if status == "complete" else "failure", None,
            user_id=job.requested_by, reason=error,
            details={"action": "room_shutdown_finished", "room_id": job.room_id,
                     "delete_id": job.delete_id, "status": status,
                     "kicked_users": len(result["kicked_users"]),
                     "failed_to_kick_users": len(result["failed_to_kick_users"]),
                     "local_aliases": len(result["local_aliases"]),
                     "purged_events": result.get("purged_events", 0)})
        logger.info("Room shutdown %s of %s: %s", job.delete_id, job.room_id, status)

    # -- the steps -----------------------------------------------------------------------

    async def _shut_down(self, job: ShutdownJob, result: dict[str, Any]) -> None:
        room_id, params = job.room_id, job.params
        if params.get("block"):
            await self._d.admin_rooms.block(job.requested_by, room_id)
        if await self._d.rooms.get_room_version(room_id) is None:
            return  # blocked ahead of ever being known: nothing else to do
        new_room_user = params.get("new_room_user_id")
        if new_room_user and result["new_room_id"] is None:
            result["new_room_id"] = await self._notice_room(new_room_user, params)
            await self._save(job, "shutting_down", result)
        await self._d.rooms.set_public(room_id, False)
        message = params.get("message") or DEFAULT_MESSAGE
        for user_id, membership in await self._store.local_members(room_id):
            if self._stopping:
                return
            if membership == "ban":
                continue
            try:
                await self._d.membership.update(user_id, room_id, user_id, "leave", message)
            except MatrixError as e:
                logger.warning("shutdown %s: %s could not leave: %s", job.delete_id, user_id, e)
                if user_id not in result["failed_to_kick_users"]:
                    result["failed_to_kick_users"].append(user_id)
                await self._save(job, "shutting_down", result)
                continue
            if user_id not in result["kicked_users"]:
                result["kicked_users"].append(user_id)
            await self._save(job, "shutting_down", result)
            await self._forget(user_id, room_id)
        if result["new_room_id"]:
            for user_id in result["kicked_users"]:
                await self._join_notice_room(user_id, result["new_room_id"], job.delete_id)
        for alias in await self._d.aliases.aliases_for_room(room_id):
            await self._store.block_alias(alias, room_id, job.delete_id,
                                          self._d.clock.time_msec())
            await self._d.aliases.delete_alias(alias)
            if alias not in result["local_aliases"]:
                result["local_aliases"].append(alias)
            await self._save(job, "shutting_down", result)

    async def _notice_room(self, user_id: str, params: dict[str, Any]) -> str:
        room_id, _ = await self._d.room_creation.create_room(user_id, {
            "preset": "public_chat",
            "name": params.get("room_name") or DEFAULT_ROOM_NAME,
            "power_level_content_override": {"users_default": -10},
        })
        await self._d.creation.send(room_id, user_id, "m.room.message", {
            "msgtype": "m.text", "body": params.get("message") or DEFAULT_MESSAGE})
        return room_id

    async def _forget(self, user_id: str, room_id: str) -> None:
        try:
            await self._d.membership.forget(user_id, room_id)
        except MatrixError as e:
            logger.warning("shutdown: %s could not forget %s: %s", user_id, room_id, e)

    async def _join_notice_room(self, user_id: str, new_room_id: str, delete_id: str) -> None:
        try:
            await self._d.membership.join(user_id, new_room_id)  # no-op when joined
        except MatrixError as e:
            logger.warning("shutdown %s: %s could not join the notice room: %s", delete_id,
                           user_id, e)

    async def _blocks_purge(self, job: ShutdownJob) -> bool:
        """Synapse refuses to purge a room local users are still in, unless forced."""
        if job.params.get("force_purge"):
            return False
        members = await self._store.local_members(job.room_id)
        return any(m == "join" for _, m in members)

    async def _purge(self, job: ShutdownJob, result: dict[str, Any]) -> None:
        """Delete the room's events in batches, then the rest of its rows, all in the
        room's queue (no event can be written meanwhile); then drop what the event path
        caches about it, so the room reads as unknown."""
        room_id = job.room_id
        if await self._d.rooms.get_room_version(room_id) is None:
            return
        async with self._d.persister.room_queue(room_id):
            while not self._stopping:
                n = await self._store.purge_room_batch(room_id, self._purge_batch)
                if n == 0:
                    break
                result["purged_events"] = int(result.get("purged_events", 0)) + n
                await self._save(job, "purging", result)
            if self._stopping:
                return
            await self._store.purge_room_rest(room_id)
            self._d.persister.forget_room(room_id)
            self._d.rooms.forget_room(room_id)


# -- the background jobs listing ---------------------------------------------------------

_JOB_STATUS = {"scheduled": "scheduled", "shutting_down": "active", "purging": "active",
               "complete": "complete", "failed": "failed"}


def job_info(job: ShutdownJob) -> JobInfo:
    r = job.result
    progress = {"kicked_users": len(r.get("kicked_users", [])),
                "failed_to_kick_users": len(r.get("failed_to_kick_users", [])),
                "local_aliases": len(r.get("local_aliases", [])),
                "purged_events": int(r.get("purged_events", 0))}
    return JobInfo(job_id=job.delete_id, kind=RoomShutdownJobSource.kind,
                   status=_JOB_STATUS.get(job.status, "failed"), created_ts=job.created_ts,
                   updated_ts=job.updated_ts, target=job.room_id,
                   requested_by=job.requested_by, progress=progress, error=job.error)


class RoomShutdownJobSource:
    kind = "room_shutdown"

    def __init__(self, store: AdminRoomStore) -> None:
        self._store = store

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        return [job_info(j) for j in await self._store.list_jobs(limit, before_ts)]

    async def get_job(self, job_id: str) -> JobInfo | None:
        if not job_id.startswith(ID_PREFIX):
            return None
        job = await self._store.get_job(job_id)
        return job_info(job) if job else None
