"""Blocked remote servers: ``/_parley/admin/v1/federation/blocked_servers`` (list) and
``.../{serverName}`` (GET, PUT to block with an optional reason, DELETE to unblock).
Servers blocked by ``federation.blocked_servers`` in the config are listed with
``source: "config"`` and cannot be unblocked here."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_users import Actor
from homeserver.handlers.server_blocks import BlockEntry, ServerBlocks
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth

PATH = "/_parley/admin/v1/federation/blocked_servers"
MAX_LIST_LIMIT = 1000
MAX_OFFSET = 10**9

BLOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": ["string", "null"], "maxLength": 1000}},
    "additionalProperties": False,
}


def entry_json(e: BlockEntry) -> dict[str, Any]:
    return {"server_name": e.server_name, "source": e.source, "blocked_by": e.blocked_by,
            "blocked_ts": e.blocked_ts, "reason": e.reason}


class BlockedServerServlets:
    def __init__(self, blocks: ServerBlocks, admin_auth: AdminAuth) -> None:
        self._blocks = blocks
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("GET", PATH, self.on_list)
        router.add("GET", f"{PATH}/{{serverName}}", self.on_get)
        router.add("PUT", f"{PATH}/{{serverName}}", self.on_put, body_schema=BLOCK_SCHEMA)
        router.add("DELETE", f"{PATH}/{{serverName}}", self.on_delete)

    async def _actor(self, req: ApiRequest) -> Actor:
        requester, role = await self._admin.require_role(req)
        return Actor(requester, role, req.client)

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        await self._actor(req)
        offset = req.query_int("from", 0, maximum=MAX_OFFSET)
        limit = req.query_int("limit", 100, minimum=1, maximum=MAX_LIST_LIMIT)
        assert offset is not None and limit is not None
        entries, total = await self._blocks.list_blocks(offset, limit)
        out: dict[str, Any] = {"blocked_servers": [entry_json(e) for e in entries],
                               "total": total}
        if offset + len(entries) < total:
            out["next_token"] = offset + len(entries)
        return 200, out

    async def on_get(self, req: ApiRequest, serverName: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        return 200, entry_json(await self._blocks.get_block(serverName))

    async def on_put(self, req: ApiRequest, serverName: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        entry = await self._blocks.block(actor, serverName, req.body.get("reason"))
        return 200, entry_json(entry)

    async def on_delete(self, req: ApiRequest, serverName: str) -> tuple[int, Any]:  # noqa: N803
        await self._blocks.unblock(await self._actor(req), serverName)
        return 200, {}
