"""PUT /rooms/{roomId}/typing/{userId}, POST /rooms/{roomId}/receipt/{receiptType}/{eventId},
POST /rooms/{roomId}/read_markers and GET/PUT /presence/{userId}/status."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.presence import STATES, PresenceHandler
from homeserver.handlers.receipts import ReceiptsHandler
from homeserver.handlers.typing import TypingHandler
from homeserver.http.params import json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

MAX_STATUS_MSG_LENGTH = 2048

TYPING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["typing"],
    "properties": {
        "typing": {"type": "boolean"},
        "timeout": json_int(),
    },
}
# Synapse refuses any other key, and a null or non-string status_msg.
PRESENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["presence"],
    "additionalProperties": False,
    "properties": {
        "presence": {"enum": list(STATES)},
        "status_msg": {"type": "string", "maxLength": MAX_STATUS_MSG_LENGTH},
    },
}
# thread_id and the read_markers values are checked by the handler, which answers
# M_INVALID_PARAM for them as the spec asks.
OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


class EphemeralServlets:
    def __init__(self, typing: TypingHandler, receipts: ReceiptsHandler,
                 presence: PresenceHandler) -> None:
        self._typing = typing
        self._receipts = receipts
        self._presence = presence

    def register(self, router: Router) -> None:
        router.add("PUT", client_paths("/rooms/{roomId}/typing/{userId}"), self.on_typing,
                   body_schema=TYPING_SCHEMA)
        router.add("POST", client_paths("/rooms/{roomId}/receipt/{receiptType}/{eventId}"),
                   self.on_receipt, body_schema=OBJECT_SCHEMA)
        router.add("POST", client_paths("/rooms/{roomId}/read_markers"), self.on_read_markers,
                   body_schema=OBJECT_SCHEMA)
        presence_paths = client_paths("/presence/{userId}/status")
        router.add("GET", presence_paths, self.on_get_presence)
        router.add("PUT", presence_paths, self.on_put_presence, body_schema=PRESENCE_SCHEMA)

    async def on_typing(self, req: ApiRequest, roomId: str, userId: str  # noqa: N803
                        ) -> tuple[int, Any]:
        r = req.require_requester()
        timeout = req.body.get("timeout")
        await self._typing.set_typing(r.user_id, r.device_id, userId, roomId,
                                      req.body["typing"], None if timeout is None else int(timeout))
        return 200, {}

    async def on_receipt(self, req: ApiRequest, roomId: str, receiptType: str,  # noqa: N803
                         eventId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._receipts.post_receipt(r.user_id, r.device_id, roomId, receiptType, eventId,
                                          req.body)
        return 200, {}

    async def on_read_markers(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._receipts.set_read_markers(r.user_id, r.device_id, roomId, req.body)
        return 200, {}

    async def on_get_presence(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, await self._presence.get_for_client(r.user_id, userId)

    async def on_put_presence(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._presence.set_from_client(r.user_id, r.device_id, userId,
                                             req.body["presence"], req.body.get("status_msg"))
        return 200, {}
