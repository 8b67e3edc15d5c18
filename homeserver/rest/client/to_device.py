"""PUT /sendToDevice/{eventType}/{txnId}."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

SEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {"messages": {
        "type": "object",
        "additionalProperties": {"type": "object",
                                 "additionalProperties": {"type": "object"}},
    }},
}


class ToDeviceServlets:
    def __init__(self, to_device: ToDeviceHandler) -> None:
        self._to_device = to_device

    def register(self, router: Router) -> None:
        router.add("PUT", client_paths("/sendToDevice/{eventType}/{txnId}"), self.on_send,
                   body_schema=SEND_SCHEMA)

    async def on_send(self, req: ApiRequest, eventType: str, txnId: str  # noqa: N803
                      ) -> tuple[int, Any]:
        r = req.require_requester()
        await self._to_device.send(r.user_id, r.device_id, eventType, txnId,
                                   req.body["messages"])
        return 200, {}
