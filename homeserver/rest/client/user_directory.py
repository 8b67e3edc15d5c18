"""POST /user_directory/search."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.user_directory import UserDirectoryHandler
from homeserver.http.params import MAX_SAFE_INTEGER, json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["search_term"],
    "properties": {
        "search_term": {"type": "string"},
        "limit": json_int(minimum=-MAX_SAFE_INTEGER),
    },
}


class UserDirectoryServlets:
    def __init__(self, handler: UserDirectoryHandler) -> None:
        self._handler = handler

    def register(self, router: Router) -> None:
        # Guests may not search (Synapse: allow_guest=False).
        router.add("POST", client_paths("/user_directory/search"), self.on_search,
                   body_schema=SEARCH_SCHEMA)

    async def on_search(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._handler.search(r.user_id, req.body["search_term"],
                                               int(req.body.get("limit", 10)))
