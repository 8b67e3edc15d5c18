"""Client-server endpoints only an application service may call:
POST /_matrix/client/v1/appservice/{appserviceId}/ping (spec v1.7) and
PUT / DELETE /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}
(the service's per-network public room list, read back through /publicRooms with
``third_party_instance_id`` ``<service id>|<network id>``).

A caller whose token is not an application service's gets 403 M_FORBIDDEN, as Synapse.
"""

from __future__ import annotations

from typing import Any

from homeserver.appservice.auth import app_service_of
from homeserver.appservice.handler import AppserviceHandler
from homeserver.http.errors import Codes, MatrixError, forbidden
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id

PING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"transaction_id": {"type": "string", "maxLength": 255}},
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"visibility": {"enum": ["public", "private"]}},
}
MAX_NETWORK_ID = 255


class AppserviceOnlyServlets:
    def __init__(self, appservices: AppserviceHandler | None = None) -> None:
        self._appservices = appservices

    def register(self, router: Router) -> None:
        router.add("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping", self.on_ping,
                   body_schema=PING_SCHEMA)
        path = client_paths("/directory/list/appservice/{networkId}/{roomId}")
        router.add("PUT", path, self.on_directory_list, body_schema=LIST_SCHEMA)
        router.add("DELETE", path, self.on_directory_unlist, json_body=False)

    def _service_id(self, req: ApiRequest, what: str) -> str:
        as_id = app_service_of(req.require_requester())
        if as_id is None or self._appservices is None:
            raise forbidden(f"Only application services can use {what}.")
        return as_id

    async def on_ping(self, req: ApiRequest, appserviceId: str  # noqa: N803
                      ) -> tuple[int, Any]:
        as_id = self._service_id(req, "the /appservice/ping endpoint")
        if as_id != appserviceId:
            raise forbidden("appservice_id does not match the requesting application service")
        assert self._appservices is not None
        svc = self._appservices.by_id[as_id]
        duration = await self._appservices.ping(svc, req.body.get("transaction_id"))
        return 200, {"duration_ms": duration}

    async def _set(self, req: ApiRequest, network_id: str, room_id: str,
                   listed: bool) -> tuple[int, Any]:
        as_id = self._service_id(req, "the appservice published room list")
        if not network_id or len(network_id) > MAX_NETWORK_ID:
            raise MatrixError(400, "Invalid network id", Codes.INVALID_PARAM)
        check_room_id(room_id)
        assert self._appservices is not None
        await self._appservices.set_listed(as_id, network_id, room_id, listed)
        return 200, {}

    async def on_directory_list(self, req: ApiRequest, networkId: str,  # noqa: N803
                                roomId: str) -> tuple[int, Any]:  # noqa: N803
        return await self._set(req, networkId, roomId,
                               req.body.get("visibility", "public") == "public")

    async def on_directory_unlist(self, req: ApiRequest, networkId: str,  # noqa: N803
                                  roomId: str) -> tuple[int, Any]:  # noqa: N803
        return await self._set(req, networkId, roomId, False)
