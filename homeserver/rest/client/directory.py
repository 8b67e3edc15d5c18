"""Room aliases (/directory/room/{roomAlias}, /rooms/{roomId}/aliases) and the published
room list (/directory/list/room/{roomId}, /publicRooms)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.directory import DirectoryHandler
from homeserver.http.params import json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

SET_ALIAS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["room_id"],
    "properties": {"room_id": {"type": "string", "maxLength": 255}},
}
SET_VISIBILITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"visibility": {"enum": ["public", "private"]}},
}
PUBLIC_ROOMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        # null is accepted wherever a field is optional, as clients send it.
        "limit": json_int(nullable=True),
        "since": {"type": ["string", "null"], "maxLength": 1024},
        "filter": {
            "type": ["object", "null"],
            "properties": {
                "generic_search_term": {"type": ["string", "null"], "maxLength": 1000},
                "room_types": {"type": ["array", "null"], "maxItems": 50,
                               "items": {"type": ["string", "null"], "maxLength": 255}},
            },
        },
        # SyTest (and Synapse, which takes any truthy value) send the string "true".
        "include_all_networks": {"anyOf": [{"type": ["boolean", "null"]},
                                           {"enum": ["true", "false"]}]},
        "third_party_instance_id": {"type": ["string", "null"], "maxLength": 255},
    },
}


class DirectoryServlets:
    def __init__(self, directory: DirectoryHandler) -> None:
        self._directory = directory

    def register(self, router: Router) -> None:
        alias_path = client_paths("/directory/room/{roomAlias}")
        router.add("PUT", alias_path, self.on_put_alias, body_schema=SET_ALIAS_SCHEMA)
        # Resolving an alias needs no token (Synapse, and the spec lists no security).
        router.add("GET", alias_path, self.on_get_alias, auth="none")
        router.add("DELETE", alias_path, self.on_delete_alias)
        router.add("GET", client_paths("/rooms/{roomId}/aliases"), self.on_room_aliases)
        list_path = client_paths("/directory/list/room/{roomId}")
        router.add("GET", list_path, self.on_get_visibility, auth="none")
        router.add("PUT", list_path, self.on_put_visibility, body_schema=SET_VISIBILITY_SCHEMA)
        # GET needs no token, as the spec says (Synapse gates it behind
        # allow_public_rooms_without_auth); POST (with search filters) needs one.
        router.add("GET", client_paths("/publicRooms"), self.on_get_public_rooms,
                   auth="optional", allow_guest=True)
        router.add("POST", client_paths("/publicRooms"), self.on_post_public_rooms,
                   allow_guest=True, body_schema=PUBLIC_ROOMS_SCHEMA)

    async def on_put_alias(self, req: ApiRequest, roomAlias: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._directory.create_alias(r.user_id, roomAlias, req.body["room_id"])
        return 200, {}

    async def on_get_alias(self, req: ApiRequest, roomAlias: str) -> tuple[int, Any]:  # noqa: N803
        return 200, await self._directory.get_alias(roomAlias)

    async def on_delete_alias(self, req: ApiRequest, roomAlias: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._directory.delete_alias(r.user_id, roomAlias)
        return 200, {}

    async def on_room_aliases(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, {"aliases": await self._directory.room_aliases(r.user_id, roomId)}

    async def on_get_visibility(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        return 200, {"visibility": await self._directory.get_visibility(roomId)}

    async def on_put_visibility(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._directory.set_visibility(r.user_id, roomId, req.body.get("visibility", "public"))
        return 200, {}

    async def on_get_public_rooms(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, await self._directory.public_rooms(
            limit=req.query_int("limit"), since=req.query("since"), server=req.query("server"),
            authenticated=req.requester is not None)

    async def on_post_public_rooms(self, req: ApiRequest) -> tuple[int, Any]:
        req.require_requester()
        body = req.body
        search_filter = body.get("filter") or {}
        return 200, await self._directory.public_rooms(
            limit=None if body.get("limit") is None else int(body["limit"]),
            since=body.get("since"),
            search=search_filter.get("generic_search_term"),
            room_types=search_filter.get("room_types"),
            server=req.query("server"),
            third_party_instance_id=body.get("third_party_instance_id"),
            include_all_networks=body.get("include_all_networks") in (True, "true"),
        )
