"""``POST`` / ``DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`` (Synapse's paths):
shadow-ban a local user or lift it. Semantics: homeserver/handlers/shadow_ban.py."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_users import Actor
from homeserver.handlers.shadow_ban import ShadowBans
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth, admin_paths


class ShadowBanServlets:
    def __init__(self, bans: ShadowBans, admin_auth: AdminAuth) -> None:
        self._bans = bans
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        path = admin_paths("/users/{userId}/shadow_ban")
        router.add("POST", path, self.on_ban, json_body=False)
        router.add("DELETE", path, self.on_unban, json_body=False)

    async def _actor(self, req: ApiRequest) -> Actor:
        requester, role = await self._admin.require_role(req)
        return Actor(requester, role, req.client)

    async def on_ban(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._bans.set_banned(await self._actor(req), userId, True)
        return 200, {}

    async def on_unban(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._bans.set_banned(await self._actor(req), userId, False)
        return 200, {}
