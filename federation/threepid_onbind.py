"""PUT /_matrix/federation/v1/3pid/onbind: an identity server tells us a 3PID was bound
to a Matrix ID, with the pending invites for it.

The caller is an identity server, not a homeserver: the request is not X-Matrix
signed, and nothing in its body is trusted as such. Each invite is only exchanged for
an ``m.room.member`` invite if its ``signed`` block verifies against the keys of the
room's ``m.room.third_party_invite`` event, which came from a trusted identity server
(see homeserver/handlers/identity.py). Served whether or not federation is enabled:
local rooms use it too. SyTest's identity server POSTs, so POST is accepted as well.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.identity import MAX_INVITES_PER_BIND, IdentityHandler
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest

ONBIND_PATH = "/_matrix/federation/v1/3pid/onbind"
_STRING = {"type": "string", "maxLength": 512}
ONBIND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["mxid", "medium", "address"],
    "properties": {
        "mxid": {"type": "string", "maxLength": 255},
        "medium": _STRING,
        "address": _STRING,
        "invites": {"type": "array", "maxItems": MAX_INVITES_PER_BIND,
                    "items": {"type": "object"}},
    },
}


class ThreepidOnBindServlet:
    def __init__(self, identity: IdentityHandler) -> None:
        self._identity = identity

    def register(self, router: Router) -> None:
        for method in ("PUT", "POST"):
            router.add(method, ONBIND_PATH, self.on_bind, auth="none", body_schema=ONBIND_SCHEMA)

    async def on_bind(self, req: ApiRequest) -> tuple[int, Any]:
        await self._identity.on_bind(req.body)
        return 200, {}
