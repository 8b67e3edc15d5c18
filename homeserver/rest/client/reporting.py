"""POST /rooms/{roomId}/report/{eventId}, /rooms/{roomId}/report, /users/{userId}/report.

Reports are stored for admins (reporter, target, reason, score); the content is never
copied. As in Synapse: an event must be one the reporter is joined to the room of and
may see (404 otherwise, the same answer as for an unknown event, so reports cannot
probe history); an unknown room is a 404; a user report always answers 200 and is
only stored for an existing local user (the spec lets servers hide who exists).
"""

from __future__ import annotations

from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id, split_user_id
from homeserver.rest.client.relations import check_event_id
from storage.stores.events import EventStore
from storage.stores.reports import ReportStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserStore

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
    def __init__(self, server_name: str, clock: Clock, store: ReportStore, events: EventStore,
                 members: RoomMemberStore, visibility: VisibilityHandler,
                 creation: EventCreationHandler, users: UserStore) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._events = events
        self._members = members
        self._visibility = visibility
        self._creation = creation
        self._users = users

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
        not_found = MatrixError(404, "The event was not found or you are not joined to the room.",
                                Codes.NOT_FOUND)
        membership = await self._members.get_membership(r.user_id, roomId)
        if membership is None or membership.membership != "join":
            raise not_found
        event = await self._events.get_event(eventId)
        if (event is None or event.room_id != roomId
                or not await self._visibility.filter_events(r.user_id, [event])):
            raise not_found
        await self._store.add_report("event", r.user_id, self._clock.time_msec(), room_id=roomId,
                                     event_id=eventId, reason=req.body.get("reason"),
                                     score=req.body.get("score"))
        return 200, {}

    async def on_report_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        try:
            await self._creation.room_version(roomId)
        except MatrixError as e:
            raise MatrixError(404, "The room was not found.", Codes.NOT_FOUND) from e
        await self._store.add_report("room", r.user_id, self._clock.time_msec(), room_id=roomId,
                                     reason=req.body["reason"])
        return 200, {}

    async def on_report_user(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _, server = split_user_id(userId)
        if len(userId.encode("utf-8")) > 255:
            raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
        if server == self._server_name and await self._users.user_exists(userId):
            await self._store.add_report("user", r.user_id, self._clock.time_msec(),
                                         target_user_id=userId, reason=req.body["reason"])
        return 200, {}
