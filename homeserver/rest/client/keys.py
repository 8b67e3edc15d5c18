"""POST /keys/upload, /keys/query, /keys/claim and GET /keys/changes."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.e2e_keys import E2eKeysHandler
from homeserver.handlers.sync import SyncToken
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

_KEY_MAP: dict[str, Any] = {"type": "object", "maxProperties": 1000}
UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "device_keys": {"type": "object"},
        "one_time_keys": _KEY_MAP,
        "fallback_keys": _KEY_MAP,
    },
}
_TIMEOUT: dict[str, Any] = json_int()
QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["device_keys"],
    "properties": {
        "timeout": _TIMEOUT,
        "device_keys": {
            "type": "object",
            "maxProperties": 1000,
            "propertyNames": {"pattern": "^@", "maxLength": 255},
            "additionalProperties": {
                "type": "array", "maxItems": 1000,
                "items": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        },
    },
}
CLAIM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["one_time_keys"],
    "properties": {
        "timeout": _TIMEOUT,
        "one_time_keys": {
            "type": "object",
            "maxProperties": 1000,
            "propertyNames": {"pattern": "^@", "maxLength": 255},
            "additionalProperties": {
                "type": "object",
                "maxProperties": 1000,
                "propertyNames": {"minLength": 1, "maxLength": 255},
                "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        },
    },
}


class KeyServlets:
    def __init__(self, keys: E2eKeysHandler, device_lists: DeviceListHandler) -> None:
        self._keys = keys
        self._device_lists = device_lists

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/keys/upload"), self.on_upload, body_schema=UPLOAD_SCHEMA)
        router.add("POST", client_paths("/keys/query"), self.on_query, body_schema=QUERY_SCHEMA)
        router.add("POST", client_paths("/keys/claim"), self.on_claim, body_schema=CLAIM_SCHEMA)
        router.add("GET", client_paths("/keys/changes"), self.on_changes)

    async def on_upload(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._keys.upload_keys(r.user_id, r.device_id, req.body)

    async def on_query(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._keys.query_keys(r.user_id, req.body)

    async def on_claim(self, req: ApiRequest) -> tuple[int, Any]:
        req.require_requester()
        return 200, await self._keys.claim_keys(req.body)

    async def on_changes(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        raw_from, raw_to = req.query("from"), req.query("to")
        if not raw_from or not raw_to:
            raise MatrixError(400, "'from' and 'to' are required", Codes.MISSING_PARAM)
        since = SyncToken.parse(raw_from).position("device_lists")
        upto = SyncToken.parse(raw_to).position("device_lists")
        delta = await self._device_lists.get_delta(r.user_id, since, upto)
        return 200, {"changed": delta.changed, "left": delta.left}
