"""POST /rooms/{roomId}/report/{eventId}, /rooms/{roomId}/report, /users/{userId}/report:
validation here, the rules (who may report what, what is stored) in
homeserver/handlers/reporting.py.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.reporting import ReportingHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id, split_user_id
from homeserver.rest.client.relations import check_event_id

MAX_REASON = 1000  # characters, as Synapse
_REASON = {"type": "string", "maxLength": MAX_REASON}
EVENT_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    # score was removed in spec v1.18; still accepted (and stored) for older clients.
    "properties": {"reason": _REASON, "score": {"type": "integer", "minimum": -100, "maximum": 0}},
}
REASON_REQUIRED_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["reason"], "properties": {"reason": _REASON},
}


class ReportingServlets:
    def __init__(self, reporting: ReportingHandler) -> None:
        self._reporting = reporting

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/rooms/{roomId}/report/{eventId}"), self.on_report_event,
                   body_schema=EVENT_REPORT_SCHEMA)
        router.add("POST", client_paths("/rooms/{roomId}/report"), self.on_report_room,
                   body_schema=REASON_REQUIRED_SCHEMA)
        router.add("POST", client_paths("/users/{userId}/report"), self.on_report_user,
                   body_schema=REASON_REQUIRED_SCHEMA)

    async def on_report_event(self, req: ApiRequest, roomId: str, eventId: str  # noqa: N803
                              ) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        check_event_id(eventId)
        await self._reporting.report_event(r.user_id, roomId, eventId, req.body.get("reason"),
                                           req.body.get("score"))
        return 200, {}

    async def on_report_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        await self._reporting.report_room(r.user_id, roomId, req.body["reason"])
        return 200, {}

    async def on_report_user(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _, server = split_user_id(userId)
        if len(userId.encode("utf-8")) > 255:
            raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
        await self._reporting.report_user(r.user_id, userId, server, req.body["reason"])
        return 200, {}
