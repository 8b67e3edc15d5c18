"""POST /user/{userId}/openid/request_token: a token a third party can exchange for
the caller's user id (federation ``/openid/userinfo``)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.openid import OpenIdHandler
from homeserver.http.errors import forbidden
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# "An empty object. Reserved for future expansion": any object is accepted and ignored.
REQUEST_TOKEN_SCHEMA: dict[str, Any] = {"type": "object"}


class OpenIdServlets:
    def __init__(self, openid: OpenIdHandler) -> None:
        self._openid = openid

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/user/{userId}/openid/request_token"),
                   self.on_request_token, body_schema=REQUEST_TOKEN_SCHEMA)

    async def on_request_token(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        if userId != r.user_id:
            raise forbidden("Cannot request OpenID tokens for other users")
        return 200, await self._openid.issue_token(r.user_id)
