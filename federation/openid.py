"""GET /_matrix/federation/v1/openid/userinfo: exchange an OpenID token for its owner's
user id.

Unlike the rest of the federation API this request is not signed (X-Matrix): the
caller is any third party (an integration manager, a widget host) that the user gave
the token to, so the token is the only credential. It is served whether or not
federation is enabled, as Synapse serves its ``openid`` listener resource separately.
The token travels in the query string; the access log records only the route
template, so it is never logged.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.openid import OpenIdHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest

USERINFO_PATH = "/_matrix/federation/v1/openid/userinfo"


class OpenIdUserInfoServlet:
    def __init__(self, openid: OpenIdHandler) -> None:
        self._openid = openid

    def register(self, router: Router) -> None:
        # auth="none": the generic bearer-token check must not treat the OpenID token
        # (passed as ?access_token=) as a client-server access token.
        router.add("GET", USERINFO_PATH, self.on_userinfo, auth="none")

    async def on_userinfo(self, req: ApiRequest) -> tuple[int, Any]:
        token = req.query("access_token")
        if not token:
            raise MatrixError(401, "Access token required", Codes.MISSING_TOKEN)
        user_id = await self._openid.user_for_token(token)
        if user_id is None:
            raise MatrixError(401, "Access token unknown or expired", Codes.UNKNOWN_TOKEN)
        return 200, {"sub": user_id}
