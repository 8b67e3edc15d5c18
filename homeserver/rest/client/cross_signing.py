"""POST /keys/device_signing/upload and POST /keys/signatures/upload."""

from __future__ import annotations

from typing import Any

from homeserver.auth.ui_auth import PASSWORD, UserInteractiveAuth
from homeserver.handlers.cross_signing import CrossSigningHandler
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

_KEY = {"type": ["object", "null"]}
DEVICE_SIGNING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"master_key": _KEY, "self_signing_key": _KEY, "user_signing_key": _KEY,
                   "auth": {"type": "object"}},
}
SIGNATURES_SCHEMA: dict[str, Any] = {"type": "object"}


class CrossSigningServlets:
    def __init__(self, cross_signing: CrossSigningHandler, uia: UserInteractiveAuth) -> None:
        self._cross_signing = cross_signing
        self._uia = uia

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/keys/device_signing/upload", ("v3", "unstable")),
                   self.on_upload_keys, body_schema=DEVICE_SIGNING_SCHEMA)
        router.add("POST", client_paths("/keys/signatures/upload", ("v3", "unstable")),
                   self.on_upload_signatures, body_schema=SIGNATURES_SCHEMA)

    async def on_upload_keys(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()

        async def authenticate() -> None:
            _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                               "POST", user_id=r.user_id)
            await self._uia.consume(session)  # spent before the keys are replaced

        await self._cross_signing.upload_keys(r.user_id, req.body, authenticate)
        return 200, {}

    async def on_upload_signatures(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._cross_signing.upload_signatures(r.user_id, req.body)
