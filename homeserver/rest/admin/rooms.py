"""Rooms admin API at Synapse's paths (so synapse-admin works), plus the background jobs
listing under ``/_parley/admin/v1``:

* ``GET /_synapse/admin/v1/rooms`` (``from``, ``limit``, ``order_by``, ``dir``,
  ``search_term``, ``public_rooms``, ``empty_rooms``) and ``GET .../rooms/{roomId}``: room metadata;
* ``GET .../rooms/{roomId}/members`` and ``.../state``: the state answer is metadata only
  (type, state_key, sender, event_id, origin_server_ts; never ``content``), unlike
  Synapse's;
* ``GET/PUT .../rooms/{roomId}/block``;
* ``DELETE /_synapse/admin/v2/rooms/{roomId}``: shutdown (and purge) as a background job,
  answered ``{"delete_id"}``; its status at ``GET /_synapse/admin/v2/rooms/{roomId}/
  delete_status`` and ``GET /_synapse/admin/v2/rooms/delete_status/{delete_id}``;
* ``GET /_parley/admin/v1/background_jobs`` (``kind``, ``limit``, ``from``) and
  ``GET /_parley/admin/v1/background_jobs/{jobId}``.

Permissions (rooms.read, rooms.write, jobs.read) are declared in
homeserver/rest/admin/permissions.py. What the calls do is in
:mod:`homeserver.handlers.admin_rooms`, :mod:`homeserver.handlers.room_shutdown` and
:mod:`homeserver.jobs.listing`.
"""

from __future__ import annotations

import re
from typing import Any

from homeserver.handlers.admin_rooms import ORDER_BY, AdminRoomsHandler, RoomListQuery
from homeserver.handlers.room_shutdown import RoomShutdownHandler, ShutdownJob, ShutdownRequest
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id
from homeserver.jobs.listing import JobInfo, JobRegistry
from homeserver.rest.admin._auth import AdminAuth, admin_paths

PA = "/_parley/admin/v1"
MAX_ID_LENGTH = 255
MAX_LIST_LIMIT = 1000
MAX_SEARCH = 255
MAX_OFFSET = 10**9
MAX_JOBS_LIMIT = 1000
MAX_TS = 2**53 - 1
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")

BLOCK_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["block"],
    "properties": {"block": {"type": "boolean"}},
}
DELETE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "new_room_user_id": {"type": ["string", "null"], "minLength": 1,
                             "maxLength": MAX_ID_LENGTH, "pattern": "^@"},
        "room_name": {"type": ["string", "null"], "maxLength": 255},
        "message": {"type": ["string", "null"], "maxLength": 4096},
        "block": {"type": "boolean"},
        "purge": {"type": "boolean"},
        "force_purge": {"type": "boolean"},
    },
}


def _room_id(value: str) -> str:
    """``!opaque:server`` or a v12 ``!hash``; a 400 otherwise."""
    check_room_id(value)
    return value


def _optional_bool(req: ApiRequest, name: str) -> bool | None:
    """A ``true``/``false`` filter; absent: no filter."""
    raw = req.query(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise MatrixError(400, f"Query parameter '{name}' must be true or false",
                          Codes.INVALID_PARAM)
    return raw == "true"


def status_json(job: ShutdownJob, with_id: bool) -> dict[str, Any]:
    """One job as Synapse's delete status answers it."""
    r = job.result
    out: dict[str, Any] = {"delete_id": job.delete_id} if with_id else {}
    out["status"] = "shutting_down" if job.status == "scheduled" else job.status
    if job.error is not None:
        out["error"] = job.error
    out["shutdown_room"] = {
        "kicked_users": list(r.get("kicked_users", [])),
        "failed_to_kick_users": list(r.get("failed_to_kick_users", [])),
        "local_aliases": list(r.get("local_aliases", [])),
        "new_room_id": r.get("new_room_id"),
    }
    return out


def job_json(job: JobInfo) -> dict[str, Any]:
    return {"job_id": job.job_id, "kind": job.kind, "status": job.status,
            "created_ts": job.created_ts, "updated_ts": job.updated_ts,
            "target": job.target, "requested_by": job.requested_by,
            "progress": dict(job.progress), "error": job.error}


class AdminRoomServlets:
    def __init__(self, rooms: AdminRoomsHandler, shutdown: RoomShutdownHandler,
                 jobs: JobRegistry, admin_auth: AdminAuth) -> None:
        self._rooms = rooms
        self._shutdown = shutdown
        self._jobs = jobs
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("GET", admin_paths("/rooms"), self.on_list)
        router.add("GET", admin_paths("/rooms/{roomId}"), self.on_details)
        router.add("GET", admin_paths("/rooms/{roomId}/members"), self.on_members)
        router.add("GET", admin_paths("/rooms/{roomId}/state"), self.on_state)
        router.add("GET", admin_paths("/rooms/{roomId}/block"), self.on_get_block)
        router.add("PUT", admin_paths("/rooms/{roomId}/block"), self.on_put_block,
                   body_schema=BLOCK_SCHEMA)
        router.add("DELETE", admin_paths("/rooms/{roomId}", ("v2",)), self.on_delete,
                   body_schema=DELETE_SCHEMA)
        router.add("GET", admin_paths("/rooms/delete_status/{deleteId}", ("v2",)),
                   self.on_delete_status)
        router.add("GET", admin_paths("/rooms/{roomId}/delete_status", ("v2",)),
                   self.on_room_delete_status)
        router.add("GET", f"{PA}/background_jobs", self.on_jobs)
        router.add("GET", f"{PA}/background_jobs/{{jobId}}", self.on_job)

    # -- reads ---------------------------------------------------------------------------

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        await self._admin.require_admin(req)
        offset = req.query_int("from", 0, maximum=MAX_OFFSET)
        limit = req.query_int("limit", 100, minimum=1, maximum=MAX_LIST_LIMIT)
        order_by = req.query("order_by", "name") or "name"
        if order_by not in ORDER_BY:
            raise MatrixError(400, "Unknown value for order_by", Codes.INVALID_PARAM)
        direction = req.query("dir", "f")
        if direction not in ("f", "b"):
            raise MatrixError(400, "Unknown direction: dir must be f or b",
                              Codes.INVALID_PARAM)
        search = req.query("search_term")
        if search is not None and len(search) > MAX_SEARCH:
            raise MatrixError(400, "search_term is too long", Codes.INVALID_PARAM)
        if search is not None and not search.strip():
            raise MatrixError(400, "search_term cannot be empty", Codes.INVALID_PARAM)
        assert offset is not None and limit is not None
        return 200, await self._rooms.list_rooms(RoomListQuery(
            search=search, public=_optional_bool(req, "public_rooms"),
            empty=_optional_bool(req, "empty_rooms"), order_by=order_by,
            forwards=direction == "f", offset=offset, limit=limit))

    async def on_details(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        return 200, await self._rooms.room_details(_room_id(roomId))

    async def on_members(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        return 200, await self._rooms.members(_room_id(roomId))

    async def on_state(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        return 200, await self._rooms.state(_room_id(roomId))

    # -- blocking ------------------------------------------------------------------------

    async def on_get_block(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        by = await self._rooms.blocked_by(_room_id(roomId))
        return 200, {"block": True, "user_id": by} if by is not None else {"block": False}

    async def on_put_block(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        block = bool(req.body["block"])
        await self._rooms.set_blocked(requester, _room_id(roomId), block)
        return 200, {"block": block}

    # -- shutdown and purge --------------------------------------------------------------

    async def on_delete(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        body: dict[str, Any] = req.body
        delete_id = await self._shutdown.start(requester, ShutdownRequest(
            room_id=_room_id(roomId), new_room_user_id=body.get("new_room_user_id"),
            room_name=body.get("room_name"), message=body.get("message"),
            block=bool(body.get("block", False)), purge=bool(body.get("purge", True)),
            force_purge=bool(body.get("force_purge", False))))
        return 200, {"delete_id": delete_id}

    async def on_delete_status(self, req: ApiRequest, deleteId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        job = await self._shutdown.status(deleteId)
        if job is None:
            raise MatrixError(404, "delete id not found", Codes.NOT_FOUND)
        return 200, status_json(job, with_id=False)

    async def on_room_delete_status(self, req: ApiRequest,
                                    roomId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        jobs = await self._shutdown.statuses_for_room(_room_id(roomId))
        if not jobs:
            raise MatrixError(404, "No delete task for room", Codes.NOT_FOUND)
        return 200, {"results": [status_json(j, with_id=True) for j in jobs]}

    # -- background jobs -----------------------------------------------------------------

    async def on_jobs(self, req: ApiRequest) -> tuple[int, Any]:
        await self._admin.require_admin(req)
        limit = req.query_int("limit", 50, minimum=1, maximum=MAX_JOBS_LIMIT)
        before = req.query_int("from", None, minimum=1, maximum=MAX_TS)
        kind = req.query("kind")
        if kind is not None and not _KIND.match(kind):
            raise MatrixError(400, "Invalid kind", Codes.INVALID_PARAM)
        assert limit is not None
        page, next_ts = await self._jobs.page(limit, before, kind)
        out: dict[str, Any] = {"jobs": [job_json(j) for j in page],
                               "kinds": self._jobs.kinds}
        if next_ts is not None:
            out["next_batch"] = str(next_ts)
        return 200, out

    async def on_job(self, req: ApiRequest, jobId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        job = await self._jobs.get_job(jobId) if 0 < len(jobId) <= 128 else None
        if job is None:
            raise MatrixError(404, "Job not found", Codes.NOT_FOUND)
        return 200, job_json(job)
