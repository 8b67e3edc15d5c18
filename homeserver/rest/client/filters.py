"""POST /user/{userId}/filter and GET /user/{userId}/filter/{filterId}.

The body schema follows the spec's Filter / RoomFilter / RoomEventFilter / EventFilter
definitions. Unknown keys are allowed (new MSC fields appear in filters all the time);
the known ones must have the spec's types.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.filters import FilterHandler
from homeserver.http.params import json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_USER_IDS: dict[str, Any] = {"type": "array", "items": {"type": "string", "pattern": "^@"}}
_ROOM_IDS: dict[str, Any] = {"type": "array", "items": {"type": "string", "pattern": "^!"}}

# EventFilter. The spec asks for limit > 0; 0 is accepted as Synapse does (clients send it).
_EVENT_FILTER_PROPERTIES: dict[str, Any] = {
    "limit": json_int(),
    "types": _STRINGS,
    "not_types": _STRINGS,
    "senders": _USER_IDS,
    "not_senders": _USER_IDS,
}
# RoomEventFilter = EventFilter + these.
_ROOM_EVENT_FILTER_PROPERTIES: dict[str, Any] = {
    **_EVENT_FILTER_PROPERTIES,
    "rooms": _ROOM_IDS,
    "not_rooms": _ROOM_IDS,
    "contains_url": {"type": "boolean"},
    "lazy_load_members": {"type": "boolean"},
    "include_redundant_members": {"type": "boolean"},
    "unread_thread_notifications": {"type": "boolean"},
}

FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "event_filter": {"type": "object", "properties": _EVENT_FILTER_PROPERTIES},
        "room_event_filter": {"type": "object", "properties": _ROOM_EVENT_FILTER_PROPERTIES},
    },
    "properties": {
        "event_fields": _STRINGS,
        "event_format": {"type": "string", "enum": ["client", "federation"]},
        "presence": {"$ref": "#/$defs/event_filter"},
        "account_data": {"$ref": "#/$defs/event_filter"},
        "room": {
            "type": "object",
            "properties": {
                "rooms": _ROOM_IDS,
                "not_rooms": _ROOM_IDS,
                "include_leave": {"type": "boolean"},
                "ephemeral": {"$ref": "#/$defs/room_event_filter"},
                "state": {"$ref": "#/$defs/room_event_filter"},
                "timeline": {"$ref": "#/$defs/room_event_filter"},
                "account_data": {"$ref": "#/$defs/room_event_filter"},
            },
        },
    },
}


class FilterServlets:
    def __init__(self, filters: FilterHandler) -> None:
        self._filters = filters

    def register(self, router: Router) -> None:
        # Guests sync too, so they may keep filters (as in Synapse).
        router.add("POST", client_paths("/user/{userId}/filter"), self.on_post,
                   body_schema=FILTER_SCHEMA, allow_guest=True)
        router.add("GET", client_paths("/user/{userId}/filter/{filterId}"), self.on_get,
                   allow_guest=True)

    async def on_post(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, {"filter_id": await self._filters.add_filter(r.user_id, userId, req.body)}

    async def on_get(self, req: ApiRequest, userId: str, filterId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, await self._filters.get_filter_for_client(r.user_id, userId, filterId)
