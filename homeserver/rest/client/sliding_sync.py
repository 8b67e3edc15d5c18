"""POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync (MSC4186)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.sliding_sync import SlidingSyncHandler
from homeserver.handlers.sliding_sync_types import SlidingSyncRequest
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
MAX_TIMEOUT_MS = 5 * 60 * 1000
MAX_RANGE_END = 2**31 - 1
MAX_INT = 2**31 - 1  # larger timeline limits are capped by the handler

_ID = {"type": "string", "minLength": 1, "maxLength": 255}
_ROOM_TYPE = {"anyOf": [{"type": "string", "maxLength": 255}, {"type": "null"}]}
_REQUIRED_STATE = {
    "type": "array", "maxItems": 100,
    "items": {"type": "array", "minItems": 2, "maxItems": 2,
              "items": {"type": "string", "maxLength": 255}},
}
_ROOM_CONFIG_PROPS: dict[str, Any] = {
    "required_state": _REQUIRED_STATE,
    "timeline_limit": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
}
_FILTERS = {
    "type": "object",
    "properties": {
        "is_dm": {"type": "boolean"},
        "is_encrypted": {"type": "boolean"},
        "is_invite": {"type": "boolean"},
        "room_types": {"type": "array", "maxItems": 20, "items": _ROOM_TYPE},
        "not_room_types": {"type": "array", "maxItems": 20, "items": _ROOM_TYPE},
        "spaces": {"type": "array", "maxItems": 50, "items": _ID},
    },
}
_LIST = {
    "type": "object",
    "properties": {
        **_ROOM_CONFIG_PROPS,
        "ranges": {"type": "array", "maxItems": 20, "items": {
            "type": "array", "minItems": 2, "maxItems": 2,
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_RANGE_END}}},
        "filters": _FILTERS,
    },
}
_EXTENSION = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "lists": {"type": "array", "maxItems": 100, "items": {"type": "string",
                                                              "maxLength": 255}},
        "rooms": {"type": "array", "maxItems": 1000, "items": {"type": "string",
                                                               "maxLength": 255}},
        "since": {"type": "string", "pattern": "^[0-9]{1,15}$"},
        "limit": {"type": "integer", "minimum": 0, "maximum": 1000},
    },
}
BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "conn_id": {"type": "string", "maxLength": 100},
        "txn_id": {"type": "string", "maxLength": 255},
        "lists": {"type": "object", "maxProperties": 100,
                  "propertyNames": {"maxLength": 64}, "additionalProperties": _LIST},
        "unsubscribe_rooms": {"type": "array", "maxItems": 1000, "items": _ID},
        "room_subscriptions": {
            "type": "object", "maxProperties": 1000, "propertyNames": {"maxLength": 255},
            "additionalProperties": {"type": "object", "properties": _ROOM_CONFIG_PROPS}},
        "extensions": {"type": "object", "properties": {
            name: _EXTENSION for name in ("to_device", "e2ee", "account_data", "receipts",
                                          "typing")}},
    },
}


class SlidingSyncServlets:
    def __init__(self, handler: SlidingSyncHandler) -> None:
        self._handler = handler

    def register(self, router: Router) -> None:
        router.add("POST", PATH, self.on_sync, body_schema=BODY_SCHEMA, allow_guest=True)

    async def on_sync(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        timeout = min(req.query_int("timeout", 0) or 0, MAX_TIMEOUT_MS)
        request = SlidingSyncRequest.parse(r.user_id, r.device_id, req.query("pos"), timeout,
                                           req.body or {})
        return 200, await self._handler.sync(request)
