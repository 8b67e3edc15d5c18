"""POST /account/password and POST /account/deactivate (both behind UIA)."""

from __future__ import annotations

from typing import Any

from homeserver.appservice.auth import app_service_of
from homeserver.auth.ui_auth import PASSWORD, UserInteractiveAuth
from homeserver.handlers.account import AccountHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

PASSWORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["new_password"],
    "properties": {
        "new_password": {"type": "string", "maxLength": 512},
        "logout_devices": {"type": "boolean"},
        "auth": {"type": "object"},
    },
}
DEACTIVATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "auth": {"type": "object"},
        "id_server": {"type": "string"},
        "erase": {"type": "boolean"},
    },
}


class AccountServlets:
    def __init__(
        self, account: AccountHandler, uia: UserInteractiveAuth, logout_by_default: bool
    ) -> None:
        self._account = account
        self._uia = uia
        self._logout_by_default = logout_by_default

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/account/password"), self.on_password,
                   body_schema=PASSWORD_SCHEMA)
        router.add("POST", client_paths("/account/deactivate"), self.on_deactivate,
                   body_schema=DEACTIVATE_SCHEMA)

    async def on_password(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        body = req.body
        _, session = await self._uia.check(body, [[PASSWORD]], req.raw.path.decode(), "POST",
                                           user_id=r.user_id)
        logout = body.get("logout_devices", self._logout_by_default)
        # A weak password is refused before the session is spent, so the client can retry.
        self._account.check_new_password(body["new_password"])
        await self._uia.consume(session)  # one completed session, one change
        await self._account.change_password(r, body["new_password"], logout, req.client)
        return 200, {}

    async def on_deactivate(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if r.is_guest:
            raise MatrixError(403, "Guests cannot deactivate", Codes.GUEST_ACCESS_FORBIDDEN)
        # An application service deactivates its own users without UIA (as Synapse).
        if app_service_of(r) is None:
            _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                               "POST", user_id=r.user_id)
            await self._uia.consume(session)
        await self._account.deactivate(r, bool(req.body.get("erase", False)), req.client)
        return 200, {"id_server_unbind_result": "no-support"}
