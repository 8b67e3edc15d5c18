"""POST /rooms/{roomId}/upgrade."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.room_upgrade import RoomUpgradeHandler
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id

UPGRADE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["new_version"],
    "properties": {
        "new_version": {"type": "string", "minLength": 1, "maxLength": 64},
        "additional_creators": {"type": "array", "maxItems": 100,
                                "items": {"type": "string", "minLength": 1, "maxLength": 255}},
    },
}


class RoomUpgradeServlets:
    def __init__(self, upgrades: RoomUpgradeHandler) -> None:
        self._upgrades = upgrades

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/rooms/{roomId}/upgrade"), self.on_upgrade,
                   body_schema=UPGRADE_SCHEMA)

    async def on_upgrade(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        new_room = await self._upgrades.upgrade(r.user_id, roomId, req.body["new_version"],
                                                req.body.get("additional_creators"))
        return 200, {"replacement_room": new_room}
