"""GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]] and
GET /rooms/{roomId}/threads (client-server API v1)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.relations import RelationsHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_event_type, check_room_id

V1 = ("v1",)


def check_event_id(event_id: str) -> None:
    if not event_id.startswith("$") or len(event_id) < 2 or len(event_id.encode()) > 255:
        raise MatrixError(400, "Invalid event ID", Codes.INVALID_PARAM)


class RelationServlets:
    def __init__(self, relations: RelationsHandler) -> None:
        self._relations = relations

    def register(self, router: Router) -> None:
        for suffix in ("", "/{relType}", "/{relType}/{eventType}"):
            router.add("GET", client_paths("/rooms/{roomId}/relations/{eventId}" + suffix, V1),
                       self.on_relations, allow_guest=True)
        router.add("GET", client_paths("/rooms/{roomId}/threads", V1), self.on_threads,
                   allow_guest=True)

    async def on_relations(self, req: ApiRequest, roomId: str, eventId: str,  # noqa: N803
                           relType: str | None = None,  # noqa: N803
                           eventType: str | None = None) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        check_event_id(eventId)
        if relType is not None and not 0 < len(relType.encode()) <= 255:
            raise MatrixError(400, "Invalid relation type", Codes.INVALID_PARAM)
        if eventType is not None:
            check_event_type(eventType)
        direction = req.query("dir", "b")
        if direction not in ("b", "f"):
            raise MatrixError(400, "dir must be 'b' or 'f'", Codes.INVALID_PARAM)
        recurse = req.query_bool("recurse") if req.query("recurse") is not None else None
        return 200, await self._relations.get_relations(
            r.user_id, r.device_id, roomId, eventId, relType, eventType, req.query("from"),
            req.query("to"), req.query_int("limit"), direction, recurse)

    async def on_threads(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        include = req.query("include", "all")
        if include not in ("all", "participated"):
            raise MatrixError(400, "include must be 'all' or 'participated'", Codes.INVALID_PARAM)
        return 200, await self._relations.get_threads(
            r.user_id, r.device_id, roomId, include, req.query("from"), req.query_int("limit"))
