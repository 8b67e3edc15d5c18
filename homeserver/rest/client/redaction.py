"""PUT /rooms/{roomId}/redact/{eventId}/{txnId}."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.pagination import check_event_id
from homeserver.handlers.redaction import RedactionHandler
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id

# The whole body becomes the redaction's content, as in Synapse (``reason`` and any
# extension keys); only ``reason`` has a type to check.
REDACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 10000}},
}


class RedactionServlets:
    def __init__(self, redaction: RedactionHandler) -> None:
        self._redaction = redaction

    def register(self, router: Router) -> None:
        router.add("PUT", client_paths("/rooms/{roomId}/redact/{eventId}/{txnId}"),
                   self.on_redact, body_schema=REDACT_SCHEMA)

    async def on_redact(self, req: ApiRequest, roomId: str, eventId: str,  # noqa: N803
                        txnId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        check_event_id(eventId)
        content = {k: v for k, v in req.body.items() if k != "redacts"}
        event_id = await self._redaction.redact(r.user_id, r.device_id, roomId, eventId, txnId,
                                                content)
        return 200, {"event_id": event_id}
