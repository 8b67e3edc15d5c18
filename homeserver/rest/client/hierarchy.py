"""GET /rooms/{roomId}/hierarchy and GET /room_summary/{roomIdOrAlias} (v1)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.hierarchy import HierarchyHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_alias, check_room_id

V1 = ("v1",)


class HierarchyServlets:
    def __init__(self, hierarchy: HierarchyHandler) -> None:
        self._hierarchy = hierarchy

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/rooms/{roomId}/hierarchy", V1), self.on_hierarchy,
                   allow_guest=True)
        # The spec lets servers answer without a token for rooms anyone may see.
        router.add("GET", client_paths("/room_summary/{roomIdOrAlias}", V1), self.on_summary,
                   auth="optional", allow_guest=True)

    async def on_hierarchy(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        return 200, await self._hierarchy.hierarchy(
            r.user_id, roomId, req.query_bool("suggested_only"), req.query_int("max_depth"),
            req.query_int("limit"), req.query("from"))

    async def on_summary(self, req: ApiRequest, roomIdOrAlias: str) -> tuple[int, Any]:  # noqa: N803
        if roomIdOrAlias.startswith("#"):
            check_room_alias(roomIdOrAlias)
        elif roomIdOrAlias.startswith("!"):
            check_room_id(roomIdOrAlias)
        else:
            raise MatrixError(400, "Expected a room ID or a room alias", Codes.INVALID_PARAM)
        user_id = req.requester.user_id if req.requester is not None else None
        return 200, await self._hierarchy.room_summary(user_id, roomIdOrAlias)
