"""History purge admin API, compatible with Synapse's:

* ``POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]`` with an optional body
  ``{"delete_local_events": bool, "purge_up_to_event_id": str, "purge_up_to_ts": int}``
  starts a purge of the room's history before the event (from the path, else the body)
  or before the time, and answers ``{"purge_id": ...}`` at once;
* ``GET /_synapse/admin/v1/purge_history_status/{purge_id}`` answers
  ``{"status": "active" | "complete" | "failed"}`` (plus ``error`` when failed), 404
  for an unknown or expired id.

Both are for server admins only (403 M_FORBIDDEN otherwise); every purge started is
recorded as an ``admin_action`` security event. What a purge does is in
:mod:`homeserver.handlers.purge_history`.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.purge_history import PurgeHistoryHandler, PurgeRequest
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import json_int
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth, admin_paths

MAX_ID_LENGTH = 255  # the spec's limit on room and event ids

PURGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "delete_local_events": {"type": "boolean"},
        "purge_up_to_event_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        "purge_up_to_ts": json_int(),
    },
}


def _check_id(value: str, sigil: str, what: str) -> str:
    if not value.startswith(sigil) or len(value) > MAX_ID_LENGTH:
        raise MatrixError(400, f"Invalid {what}", Codes.INVALID_PARAM)
    return value


class PurgeHistoryServlets:
    def __init__(self, handler: PurgeHistoryHandler, admin_auth: AdminAuth) -> None:
        self._handler = handler
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("POST", admin_paths("/purge_history/{roomId}"), self.on_purge,
                   body_schema=PURGE_SCHEMA)
        router.add("POST", admin_paths("/purge_history/{roomId}/{eventId}"), self.on_purge,
                   body_schema=PURGE_SCHEMA)
        router.add("GET", admin_paths("/purge_history_status/{purgeId}"), self.on_status)

    async def on_purge(self, req: ApiRequest, roomId: str,  # noqa: N803
                       eventId: str | None = None) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        body: dict[str, Any] = req.body
        room_id = _check_id(roomId, "!", "room id")
        event_id = eventId if eventId is not None else body.get("purge_up_to_event_id")
        up_to_ts = body.get("purge_up_to_ts")
        if event_id is not None:
            event_id = _check_id(event_id, "$", "event id")
            up_to_ts = None
        elif up_to_ts is None:
            raise MatrixError(400, "must specify purge_up_to_event_id or purge_up_to_ts",
                              Codes.BAD_JSON)
        delete_local = bool(body.get("delete_local_events", False))
        purge_id = await self._handler.start_by_admin(requester, PurgeRequest(
            room_id=room_id, requested_by=requester.user_id, event_id=event_id,
            up_to_ts=up_to_ts, delete_local_events=delete_local))
        return 200, {"purge_id": purge_id}

    async def on_status(self, req: ApiRequest, purgeId: str) -> tuple[int, Any]:  # noqa: N803
        await self._admin.require_admin(req)
        job = await self._handler.status(purgeId)
        if job is None:
            raise MatrixError(404, "Purge not found", Codes.NOT_FOUND)
        out: dict[str, Any] = {"status": job.status}
        if job.error is not None:
            out["error"] = job.error
        return 200, out
