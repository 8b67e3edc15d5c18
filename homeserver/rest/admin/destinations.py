"""Synapse's federation destinations admin API (``/_synapse/admin/v1/federation/
destinations``): the list (``from``, ``limit``, ``order_by``, ``dir``, ``destination``
filter), one destination, the rooms shared with it, and ``reset_connection``."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_users import Actor
from homeserver.handlers.federation_destinations import FederationDestinationsAdmin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth

PATH = "/_synapse/admin/v1/federation/destinations"
MAX_LIMIT = 1000
MAX_OFFSET = 10**9
MAX_SEARCH = 255


def _direction(req: ApiRequest) -> bool:
    """True for ``dir=b`` (backwards)."""
    value = req.query("dir", "f")
    if value not in ("f", "b"):
        raise MatrixError(400, "dir must be 'f' or 'b'", Codes.INVALID_PARAM)
    return value == "b"


def _page(req: ApiRequest) -> tuple[int, int]:
    offset = req.query_int("from", 0, maximum=MAX_OFFSET)
    limit = req.query_int("limit", 100, minimum=1, maximum=MAX_LIMIT)
    assert offset is not None and limit is not None
    return offset, limit


class DestinationServlets:
    def __init__(self, handler: FederationDestinationsAdmin, admin_auth: AdminAuth) -> None:
        self._handler = handler
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("GET", PATH, self.on_list)
        router.add("GET", f"{PATH}/{{destination}}", self.on_get)
        router.add("GET", f"{PATH}/{{destination}}/rooms", self.on_rooms)
        router.add("POST", f"{PATH}/{{destination}}/reset_connection", self.on_reset,
                   json_body=False)

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        await self._admin.require_role(req)
        offset, limit = _page(req)
        search = req.query("destination")
        if search is not None and len(search) > MAX_SEARCH:
            raise MatrixError(400, "destination filter too long", Codes.INVALID_PARAM)
        order_by = req.query("order_by", "destination") or "destination"
        return 200, await self._handler.list_destinations(offset, limit, order_by,
                                                          _direction(req), search)

    async def on_get(self, req: ApiRequest, destination: str) -> tuple[int, Any]:
        await self._admin.require_role(req)
        return 200, await self._handler.get_destination(destination)

    async def on_rooms(self, req: ApiRequest, destination: str) -> tuple[int, Any]:
        await self._admin.require_role(req)
        offset, limit = _page(req)
        return 200, await self._handler.destination_rooms(destination, offset, limit,
                                                          _direction(req))

    async def on_reset(self, req: ApiRequest, destination: str) -> tuple[int, Any]:
        requester, role = await self._admin.require_role(req)
        await self._handler.reset_connection(Actor(requester, role, req.client), destination)
        return 200, {}
