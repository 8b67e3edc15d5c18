"""Client-server endpoints only an application service may call:
POST /_matrix/client/v1/appservice/{appserviceId}/ping (spec v1.7) and
PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}.

Parley registers no application services, so no access token ever belongs to one:
every caller is refused with 403 M_FORBIDDEN, as Synapse answers a user token. Routing
them (rather than 404 M_UNRECOGNIZED) is what lets /versions honestly list v1.7.
The body is not read: the caller is refused before it would matter.
"""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import forbidden
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest


class AppserviceOnlyServlets:
    def register(self, router: Router) -> None:
        router.add("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping", self.on_ping)
        router.add("PUT", client_paths("/directory/list/appservice/{networkId}/{roomId}"),
                   self.on_directory_list)

    async def on_ping(self, req: ApiRequest, appserviceId: str  # noqa: N803
                      ) -> tuple[int, Any]:
        req.require_requester()
        raise forbidden("Only application services can use the /appservice/ping endpoint.")

    async def on_directory_list(self, req: ApiRequest, networkId: str,  # noqa: N803
                                roomId: str) -> tuple[int, Any]:  # noqa: N803
        req.require_requester()
        raise forbidden("Only application services can edit the appservice published room list.")
