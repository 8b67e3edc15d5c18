"""GET /profile/{userId}, GET/PUT /profile/{userId}/displayname and .../avatar_url.

Reads need no access token (the spec makes auth optional; Synapse's default too).
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.profile import (
    MAX_AVATAR_URL_LENGTH,
    MAX_DISPLAYNAME_LENGTH,
    ProfileHandler,
    profile_json,
)
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# No NUL (PostgreSQL TEXT cannot hold it) and no lone surrogates (not encodable as UTF-8).
_STORABLE_TEXT = r"^[^\x00\ud800-\udfff]*$"
# "" clears the avatar; otherwise an MXC URI: mxc://<server name>/<media id> (spec grammar).
_MXC_OR_EMPTY = r"^(mxc://[A-Za-z0-9.:\[\]-]+/[A-Za-z0-9_-]+)?$"

DISPLAYNAME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["displayname"],
    "properties": {
        "displayname": {"type": "string", "maxLength": MAX_DISPLAYNAME_LENGTH,
                        "pattern": _STORABLE_TEXT},
    },
}
AVATAR_URL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["avatar_url"],
    "properties": {
        "avatar_url": {"type": "string", "maxLength": MAX_AVATAR_URL_LENGTH,
                       "pattern": _MXC_OR_EMPTY},
    },
}


class ProfileServlets:
    def __init__(self, profiles: ProfileHandler) -> None:
        self._profiles = profiles

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/profile/{userId}"), self.on_get_profile,
                   auth="optional", allow_guest=True)
        router.add("GET", client_paths("/profile/{userId}/displayname"), self.on_get_displayname,
                   auth="optional", allow_guest=True)
        router.add("GET", client_paths("/profile/{userId}/avatar_url"), self.on_get_avatar_url,
                   auth="optional", allow_guest=True)
        # Guests may name themselves (as in Synapse), but not set an avatar.
        router.add("PUT", client_paths("/profile/{userId}/displayname"), self.on_put_displayname,
                   body_schema=DISPLAYNAME_SCHEMA, allow_guest=True)
        router.add("PUT", client_paths("/profile/{userId}/avatar_url"), self.on_put_avatar_url,
                   body_schema=AVATAR_URL_SCHEMA)

    async def on_get_profile(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        return 200, profile_json(await self._profiles.get_profile(userId))

    async def on_get_displayname(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        return 200, await self._profiles.get_field(userId, "displayname")

    async def on_get_avatar_url(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        return 200, await self._profiles.get_field(userId, "avatar_url")

    async def on_put_displayname(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._profiles.set_displayname(r.user_id, userId, req.body["displayname"])
        return 200, {}

    async def on_put_avatar_url(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._profiles.set_avatar_url(r.user_id, userId, req.body["avatar_url"])
        return 200, {}
