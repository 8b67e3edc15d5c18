"""POST /createRoom, PUT /rooms/{roomId}/send/..., GET/PUT /rooms/{roomId}/state...,
GET /rooms/{roomId}/event/{eventId}, GET /joined_rooms."""

from __future__ import annotations

from typing import Any

from homeserver.clock import Clock
from homeserver.events.client_format import serialize_event
from homeserver.events.model import Event
from homeserver.handlers.event_creation import (
    EventCreationHandler,
    check_client_state_type,
)
from homeserver.handlers.membership import MembershipHandler
from homeserver.handlers.room_creation import PRESETS, RoomCreationHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_event_type, check_room_id

_STATE_EVENT = {
    "type": "object",
    "required": ["type", "content"],
    "properties": {"type": {"type": "string", "minLength": 1, "maxLength": 255},
                   "state_key": {"type": "string", "maxLength": 255},
                   "content": {"type": "object"}},
}
# definitions/invite_3pid (homeserver/handlers/identity.py does the inviting).
_INVITE_3PID: dict[str, Any] = {
    "type": "object", "required": ["id_server", "id_access_token", "medium", "address"],
    "properties": {"id_server": {"type": "string", "maxLength": 512},
                   "id_access_token": {"type": "string", "maxLength": 512},
                   "medium": {"type": "string", "minLength": 1, "maxLength": 64},
                   "address": {"type": "string", "minLength": 1, "maxLength": 512}},
}
CREATE_ROOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "visibility": {"enum": ["public", "private"]},
        "room_alias_name": {"type": "string", "minLength": 1, "maxLength": 200,
                            "pattern": r"^[^:#\s]+$"},
        "name": {"type": "string", "maxLength": 1000},
        "topic": {"type": "string", "maxLength": 10000},
        "invite": {"type": "array", "items": {"type": "string"}, "maxItems": 500},
        "invite_3pid": {"type": "array", "maxItems": 50, "items": _INVITE_3PID},
        "room_version": {"type": "string"},
        "creation_content": {"type": "object"},
        "initial_state": {"type": "array", "items": _STATE_EVENT, "maxItems": 200},
        "preset": {"enum": sorted(PRESETS)},
        "is_direct": {"type": "boolean"},
        "power_level_content_override": {"type": "object"},
    },
}
CONTENT_SCHEMA: dict[str, Any] = {"type": "object"}


class RoomServlets:
    def __init__(
        self,
        clock: Clock,
        creation: RoomCreationHandler,
        events: EventCreationHandler,
        reads: RoomReadHandler,
        membership: MembershipHandler,
    ) -> None:
        self._clock = clock
        self._creation = creation
        self._events = events
        self._reads = reads
        self._membership = membership

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/createRoom"), self.on_create_room,
                   body_schema=CREATE_ROOM_SCHEMA)
        router.add("PUT", client_paths("/rooms/{roomId}/send/{eventType}/{txnId}"), self.on_send,
                   body_schema=CONTENT_SCHEMA, allow_guest=True)
        # Without a transaction id (r0 clients still send this; as Synapse, each request
        # makes a new event since there is nothing to de-duplicate on).
        router.add("POST", client_paths("/rooms/{roomId}/send/{eventType}"), self.on_send,
                   body_schema=CONTENT_SCHEMA, allow_guest=True)
        for suffix in ("/rooms/{roomId}/state/{eventType}/{stateKey}",
                       "/rooms/{roomId}/state/{eventType}/", "/rooms/{roomId}/state/{eventType}"):
            router.add("PUT", client_paths(suffix), self.on_put_state, body_schema=CONTENT_SCHEMA)
            router.add("GET", client_paths(suffix), self.on_get_state_event, allow_guest=True)
        router.add("GET", client_paths("/rooms/{roomId}/state"), self.on_get_state,
                   allow_guest=True)
        router.add("GET", client_paths("/rooms/{roomId}/event/{eventId}"), self.on_get_event,
                   allow_guest=True)
        router.add("GET", client_paths("/joined_rooms"), self.on_joined_rooms, allow_guest=True)

    async def on_create_room(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        room_id, alias = await self._creation.create_room(r.user_id, req.body)
        out: dict[str, Any] = {"room_id": room_id}
        if alias is not None:
            out["room_alias"] = alias
        return 200, out

    async def on_send(self, req: ApiRequest, roomId: str, eventType: str,  # noqa: N803
                      txnId: str | None = None) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        check_event_type(eventType)
        if eventType in ("m.room.redaction",):
            raise MatrixError(400, "Use /redact to redact events", Codes.BAD_JSON)
        event = await self._events.send(roomId, r.user_id, eventType, req.body,
                                        txn=(r.device_id or "", txnId) if txnId is not None
                                        else None)
        return 200, {"event_id": event.event_id}

    async def on_put_state(self, req: ApiRequest, roomId: str, eventType: str,  # noqa: N803
                           stateKey: str = "") -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        check_event_type(eventType)
        if eventType == "m.room.member":  # as Synapse: through the membership checks
            event_id = await self._membership.set_member_state(
                r.user_id, roomId, stateKey, req.body, is_guest=r.is_guest)
            return 200, {"event_id": event_id}
        check_client_state_type(eventType)
        event = await self._events.send(roomId, r.user_id, eventType, req.body, stateKey)
        return 200, {"event_id": event.event_id}

    async def on_get_state_event(self, req: ApiRequest, roomId: str, eventType: str,  # noqa: N803
                                 stateKey: str = "") -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        event = await self._reads.get_state_event(r.user_id, roomId, eventType, stateKey)
        if req.query("format") == "event":
            return 200, self._serialize(event, req)
        return 200, event.content

    async def on_get_state(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        events = await self._reads.get_state(r.user_id, roomId)
        return 200, [self._serialize(e, req) for e in events]

    async def on_get_event(self, req: ApiRequest, roomId: str, eventId: str  # noqa: N803
                           ) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        served = await self._reads.get_client_event(r.user_id, r.device_id, roomId, eventId)
        if served is not None:
            return 200, served
        event, redaction, pruned = await self._reads.get_event(r.user_id, roomId, eventId)
        bundles = await self._reads.bundled(r.user_id, r.device_id, [event])
        return 200, serialize_event(event, self._clock.time_msec(), for_user=r.user_id,
                                    for_device=r.device_id, redaction=redaction,
                                    pruned_pdu=pruned, relations=bundles.get(event.event_id))

    async def on_joined_rooms(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, {"joined_rooms": await self._reads.joined_rooms(r.user_id)}

    def _serialize(self, event: Event, req: ApiRequest) -> dict[str, Any]:
        r = req.require_requester()
        return serialize_event(event, self._clock.time_msec(), for_user=r.user_id,
                               for_device=r.device_id)
