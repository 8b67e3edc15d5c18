"""Server-side key backups: ``/room_keys/version[/{version}]`` and
``/room_keys/keys[/{roomId}[/{sessionId}]]?version=``.

Bodies are checked by the schemas below before any handler runs, so a missing or
mistyped field is a 400 (Synapse answers ``{}`` here with a 500).
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.key_backup import MEGOLM_BACKUP_V1, KeyBackupHandler, key_json
from homeserver.http.errors import Codes, MatrixError, missing_param, not_found
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# Room and session IDs are opaque to the backup; bounded so they stay index-friendly.
MAX_ID_LENGTH = 255
# Largest counter accepted: the JSON-safe integer range (stored as BIGINT).
_MAX_COUNTER = 2**53 - 1

_ID: dict[str, Any] = {"minLength": 1, "maxLength": MAX_ID_LENGTH}

AUTH_DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["public_key"],
    "properties": {
        "public_key": {"type": "string", "minLength": 1, "maxLength": 1024},
        "signatures": {"type": "object"},
    },
}
# Any algorithm name is accepted, as Synapse does (SyTest creates "m.megolm_backup.v1"
# backups with a string auth_data): the server never interprets the backup. Only the
# spec's algorithm has its auth_data shape checked; for others auth_data is opaque
# (an object or a string), bounded in size by the handler.
_ALGORITHM: dict[str, Any] = {"type": "string", "pattern": r"^[A-Za-z0-9._\-]{1,255}$"}
_SPEC_ALGORITHM_AUTH_DATA: dict[str, Any] = {
    "if": {"required": ["algorithm"], "properties": {"algorithm": {"const": MEGOLM_BACKUP_V1}}},
    "then": {"properties": {"auth_data": AUTH_DATA_SCHEMA}},
}
CREATE_VERSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["algorithm", "auth_data"],
    "properties": {
        "algorithm": _ALGORITHM,
        "auth_data": {"type": ["object", "string"]},
    },
    **_SPEC_ALGORITHM_AUTH_DATA,
}
UPDATE_VERSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["algorithm", "auth_data"],
    "properties": {
        "algorithm": _ALGORITHM,
        "auth_data": {"type": ["object", "string"]},
        "version": {"type": "string", "maxLength": 64},
    },
    **_SPEC_ALGORITHM_AUTH_DATA,
}
# KeyBackupData: the metadata the replacement rules compare, and the opaque blob.
KEY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["first_message_index", "forwarded_count", "is_verified", "session_data"],
    "properties": {
        "first_message_index": {"type": "integer", "minimum": 0, "maximum": _MAX_COUNTER},
        "forwarded_count": {"type": "integer", "minimum": 0, "maximum": _MAX_COUNTER},
        "is_verified": {"type": "boolean"},
        # An object for the spec's algorithm (checked by the handler against the
        # version's algorithm); opaque, possibly a string, for others (as Synapse).
        "session_data": {"type": ["object", "string"]},
    },
}
ROOM_KEYS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["sessions"],
    "properties": {
        "sessions": {"type": "object", "propertyNames": _ID, "additionalProperties": KEY_SCHEMA},
    },
}
ALL_KEYS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["rooms"],
    "properties": {
        "rooms": {"type": "object", "propertyNames": _ID, "additionalProperties": ROOM_KEYS_SCHEMA},
    },
}

_VERSION = "/room_keys/version"
_KEYS = "/room_keys/keys"
_ROOM = _KEYS + "/{roomId}"
_SESSION = _ROOM + "/{sessionId}"


def _check_ids(*ids: str) -> None:
    for value in ids:
        if len(value) > MAX_ID_LENGTH:
            raise MatrixError(400, "Room or session ID too long", Codes.INVALID_PARAM)


def _version_param(req: ApiRequest) -> str:
    version = req.query("version")
    if version is None:
        raise missing_param("Missing parameter: version")
    return version


class KeyBackupServlets:
    def __init__(self, backups: KeyBackupHandler) -> None:
        self._backups = backups

    def register(self, router: Router) -> None:
        router.add("POST", client_paths(_VERSION), self.on_create_version,
                   body_schema=CREATE_VERSION_SCHEMA)
        router.add("GET", client_paths(_VERSION), self.on_get_current_version)
        router.add("GET", client_paths(_VERSION + "/{version}"), self.on_get_version)
        router.add("PUT", client_paths(_VERSION + "/{version}"), self.on_put_version,
                   body_schema=UPDATE_VERSION_SCHEMA)
        router.add("DELETE", client_paths(_VERSION + "/{version}"), self.on_delete_version)
        router.add("GET", client_paths(_KEYS), self.on_get_all)
        router.add("PUT", client_paths(_KEYS), self.on_put_all, body_schema=ALL_KEYS_SCHEMA)
        router.add("DELETE", client_paths(_KEYS), self.on_delete_all)
        router.add("GET", client_paths(_ROOM), self.on_get_room)
        router.add("PUT", client_paths(_ROOM), self.on_put_room, body_schema=ROOM_KEYS_SCHEMA)
        router.add("DELETE", client_paths(_ROOM), self.on_delete_room)
        router.add("GET", client_paths(_SESSION), self.on_get_session)
        router.add("PUT", client_paths(_SESSION), self.on_put_session, body_schema=KEY_SCHEMA)
        router.add("DELETE", client_paths(_SESSION), self.on_delete_session)

    # ------------------------------------------------------------------ versions
    async def on_create_version(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        version = await self._backups.create_version(r.user_id, req.body["algorithm"],
                                                     req.body["auth_data"])
        return 200, {"version": version}

    async def on_get_current_version(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._backups.get_version(r.user_id, None)

    async def on_get_version(self, req: ApiRequest, version: str) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._backups.get_version(r.user_id, version)

    async def on_put_version(self, req: ApiRequest, version: str) -> tuple[int, Any]:
        r = req.require_requester()
        await self._backups.update_version(r.user_id, version, req.body)
        return 200, {}

    async def on_delete_version(self, req: ApiRequest, version: str) -> tuple[int, Any]:
        r = req.require_requester()
        await self._backups.delete_version(r.user_id, version)
        return 200, {}

    # ------------------------------------------------------------------ keys
    async def on_get_all(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        tree = await self._backups.get_keys(r.user_id, _version_param(req))
        return 200, {"rooms": {room: {"sessions": {s: key_json(k) for s, k in sessions.items()}}
                               for room, sessions in tree.items()}}

    async def on_get_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _check_ids(roomId)
        tree = await self._backups.get_keys(r.user_id, _version_param(req), roomId)
        return 200, {"sessions": {s: key_json(k) for s, k in tree.get(roomId, {}).items()}}

    async def on_get_session(self, req: ApiRequest, roomId: str, sessionId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _check_ids(roomId, sessionId)
        tree = await self._backups.get_keys(r.user_id, _version_param(req), roomId, sessionId)
        key = tree.get(roomId, {}).get(sessionId)
        if key is None:
            raise not_found("No room_keys found")
        return 200, key_json(key)

    async def on_put_all(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        rooms = {room: body["sessions"] for room, body in req.body["rooms"].items()}
        return 200, await self._backups.upload_keys(r.user_id, _version_param(req), rooms)

    async def on_put_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _check_ids(roomId)
        return 200, await self._backups.upload_keys(r.user_id, _version_param(req),
                                                    {roomId: req.body["sessions"]})

    async def on_put_session(self, req: ApiRequest, roomId: str, sessionId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _check_ids(roomId, sessionId)
        return 200, await self._backups.upload_keys(r.user_id, _version_param(req),
                                                    {roomId: {sessionId: req.body}})

    async def on_delete_all(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._backups.delete_keys(r.user_id, _version_param(req))

    async def on_delete_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _check_ids(roomId)
        return 200, await self._backups.delete_keys(r.user_id, _version_param(req), roomId)

    async def on_delete_session(self, req: ApiRequest, roomId: str, sessionId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _check_ids(roomId, sessionId)
        return 200, await self._backups.delete_keys(r.user_id, _version_param(req), roomId, sessionId)
