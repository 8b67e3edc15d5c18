"""``POST /_parley/admin/v1/users/{userId}/export``: an admin starts a GDPR export of
any local user's data (answers ``{"export_id"}``; 404 for an unknown user). The admin
then follows it with the client API's ``GET /_parley/client/v1/export/{exportId}``,
which admins may read for any user. Audited as an ``admin_action`` (``gdpr_export``).
The permission the route needs is declared in homeserver/rest/admin/permissions.py.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.gdpr_export import GdprExportHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth

EXPORT_PATH = "/_parley/admin/v1/users/{userId}/export"
MAX_USER_ID_LENGTH = 255


class AdminGdprExportServlet:
    def __init__(self, exports: GdprExportHandler, admin_auth: AdminAuth,
                 server_name: str) -> None:
        self._exports = exports
        self._admin = admin_auth
        self._server_name = server_name

    def register(self, router: Router) -> None:
        router.add("POST", EXPORT_PATH, self.on_export, json_body=False)

    async def on_export(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        if (not userId.startswith("@") or len(userId) > MAX_USER_ID_LENGTH
                or not userId.endswith(f":{self._server_name}")):
            raise MatrixError(400, "Can only export local users", Codes.INVALID_PARAM)
        export_id = await self._exports.request_by_admin(requester, userId)
        return 200, {"export_id": export_id}
