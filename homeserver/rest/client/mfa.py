"""Parley's own TOTP endpoints, under ``/_parley/client/v1/mfa`` (README: "Two-factor login").

- ``GET  /mfa``: status (enabled, recovery codes left, whether the server requires it)
- ``POST /mfa/totp/enroll``: behind UIA; a fresh secret and its ``otpauth://`` URI
- ``POST /mfa/totp/confirm`` ``{code}``: enables TOTP; answers the recovery codes, once
- ``POST /mfa/totp/disable``: behind UIA, which then includes a current code
- ``POST /mfa/recovery_codes/regenerate``: the same; a new set replaces the old
"""

from __future__ import annotations

from typing import Any

from homeserver.auth.mfa import MfaHandler, already_enabled, not_enabled
from homeserver.auth.ui_auth import PASSWORD, UserInteractiveAuth
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest

PREFIX = "/_parley/client/v1/mfa"

UIA_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"auth": {"type": "object"}}}
CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code"],
    "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 16}},
}


class MfaServlets:
    def __init__(self, mfa: MfaHandler, uia: UserInteractiveAuth) -> None:
        self._mfa = mfa
        self._uia = uia

    def register(self, router: Router) -> None:
        router.add("GET", PREFIX, self.on_status)
        router.add("POST", PREFIX + "/totp/enroll", self.on_enroll, body_schema=UIA_SCHEMA)
        router.add("POST", PREFIX + "/totp/confirm", self.on_confirm,
                   body_schema=CONFIRM_SCHEMA)
        router.add("POST", PREFIX + "/totp/disable", self.on_disable, body_schema=UIA_SCHEMA)
        router.add("POST", PREFIX + "/recovery_codes/regenerate", self.on_regenerate,
                   body_schema=UIA_SCHEMA)

    async def on_status(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._mfa.status(r.user_id)

    async def _authenticate(self, req: ApiRequest) -> None:
        """UIA (password; plus a second factor once enrolled), spent before acting."""
        r = req.require_requester()
        _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                           "POST", user_id=r.user_id)
        await self._uia.consume(session)

    async def on_enroll(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if await self._mfa.is_enrolled(r.user_id):  # before asking for a password
            raise already_enabled()
        await self._authenticate(req)
        return 200, await self._mfa.start_enrolment(r.user_id, req.client)

    async def on_confirm(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        codes = await self._mfa.confirm(r.user_id, req.body["code"], req.client)
        return 200, {"enabled": True, "recovery_codes": codes}

    async def on_disable(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if not await self._mfa.is_enrolled(r.user_id):
            raise not_enabled()
        await self._authenticate(req)
        await self._mfa.disable(r.user_id, req.client)
        return 200, {"enabled": False}

    async def on_regenerate(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if not await self._mfa.is_enrolled(r.user_id):
            raise not_enabled()
        await self._authenticate(req)
        return 200, {"recovery_codes":
                     await self._mfa.regenerate_recovery_codes(r.user_id, req.client)}
