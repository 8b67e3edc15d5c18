"""GET/PUT /user/{userId}/account_data/{type} and
GET/PUT /user/{userId}/rooms/{roomId}/account_data/{type}."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.account_data import AccountDataHandler
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# Any JSON object is valid account data content.
CONTENT_SCHEMA: dict[str, Any] = {"type": "object"}


class AccountDataServlets:
    def __init__(self, account_data: AccountDataHandler) -> None:
        self._account_data = account_data

    def register(self, router: Router) -> None:
        global_paths = client_paths("/user/{userId}/account_data/{type}")
        room_paths = client_paths("/user/{userId}/rooms/{roomId}/account_data/{type}")
        router.add("GET", global_paths, self.on_get)
        router.add("PUT", global_paths, self.on_put, body_schema=CONTENT_SCHEMA)
        router.add("GET", room_paths, self.on_get_room)
        router.add("PUT", room_paths, self.on_put_room, body_schema=CONTENT_SCHEMA)

    async def on_get(self, req: ApiRequest, userId: str, type: str) -> tuple[int, Any]:  # noqa: A002, N803
        r = req.require_requester()
        return 200, await self._account_data.get_from_client(r.user_id, userId, None, type)

    async def on_put(self, req: ApiRequest, userId: str, type: str) -> tuple[int, Any]:  # noqa: A002, N803
        r = req.require_requester()
        await self._account_data.set_from_client(r.user_id, userId, None, type, req.body)
        return 200, {}

    async def on_get_room(
        self, req: ApiRequest, userId: str, roomId: str, type: str  # noqa: A002, N803
    ) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._account_data.get_from_client(r.user_id, userId, roomId, type)

    async def on_put_room(
        self, req: ApiRequest, userId: str, roomId: str, type: str  # noqa: A002, N803
    ) -> tuple[int, Any]:
        r = req.require_requester()
        await self._account_data.set_from_client(r.user_id, userId, roomId, type, req.body)
        return 200, {}
