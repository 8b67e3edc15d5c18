"""``POST /_synapse/admin/v1/send_server_notice`` and the idempotent
``PUT .../send_server_notice/{txnId}`` (Synapse's paths): a notice to one local user in
their server-notices room. The content's ``body`` is sent (``formatted_body`` too, as
HTML); the notice's msgtype is always ``m.server_notice``.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_notices import AdminNotices
from homeserver.handlers.admin_users import Actor
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth, admin_paths

MAX_BODY = 16384
MAX_TXN_ID = 255

NOTICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", "content"],
    "properties": {
        "user_id": {"type": "string", "minLength": 1, "maxLength": 255},
        "content": {
            "type": "object", "required": ["body"],
            "properties": {"body": {"type": "string", "minLength": 1, "maxLength": MAX_BODY},
                           "msgtype": {"type": "string", "maxLength": 255},
                           "format": {"type": "string", "maxLength": 255},
                           "formatted_body": {"type": "string", "maxLength": MAX_BODY}},
        },
        # Synapse accepts another event type; Parley sends m.room.message notices only.
        "type": {"const": "m.room.message"},
    },
}


class ServerNoticeServlets:
    def __init__(self, notices: AdminNotices, admin_auth: AdminAuth) -> None:
        self._notices = notices
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("POST", admin_paths("/send_server_notice"), self.on_send,
                   body_schema=NOTICE_SCHEMA)
        router.add("PUT", admin_paths("/send_server_notice/{txnId}"), self.on_send,
                   body_schema=NOTICE_SCHEMA)

    async def on_send(self, req: ApiRequest, txnId: str | None = None) -> tuple[int, Any]:  # noqa: N803
        requester, role = await self._admin.require_role(req)
        if txnId is not None and len(txnId) > MAX_TXN_ID:
            raise MatrixError(400, "Transaction id is too long", Codes.INVALID_PARAM)
        event_id = await self._notices.send(Actor(requester, role, req.client),
                                            req.body["user_id"], req.body["content"], txnId)
        return 200, {"event_id": event_id}
