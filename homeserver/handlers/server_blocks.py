"""Blocked remote servers (issue 15): those an admin blocked through the admin API plus
``federation.blocked_servers`` from the config. ``is_blocked`` is what federation will
ask; today local invites to users of a blocked server are refused (``check_invitee``).
A name matches with or without its port (blocking ``evil.example`` blocks
``evil.example:8448`` too). Blocks and unblocks are audited.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.handlers.admin_media import audit_action
from homeserver.handlers.admin_users import Actor
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from storage.stores.blocked_servers import BlockedServer, BlockedServerStore

# A DNS name, an IPv4 address or a bracketed IPv6 literal, with an optional port.
SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(:[0-9]{1,5})?\Z")
CONFIG = "config"


@dataclass(frozen=True)
class BlockEntry:
    server_name: str
    source: str  # "config" | "admin"
    blocked_by: str | None
    blocked_ts: int | None
    reason: str | None


def normalise_server_name(name: str) -> str:
    """Lower-cased (DNS names are case-insensitive); 400 for what is not a server name."""
    if not SERVER_NAME.match(name):
        raise MatrixError(400, "Invalid server name", Codes.INVALID_PARAM)
    return name.lower()


def _host(name: str) -> str:
    if name.startswith("["):
        return name[:name.index("]") + 1]
    return name.rsplit(":", 1)[0] if ":" in name else name


def _entry(row: BlockedServer) -> BlockEntry:
    return BlockEntry(row.server_name, "admin", row.blocked_by, row.blocked_ts, row.reason)


class ServerBlocks:
    def __init__(self, server_name: str, clock: Clock, store: BlockedServerStore,
                 audit: SecurityEventRecorder, configured: Iterable[str] = ()) -> None:
        self._server_name = server_name.lower()
        self._clock = clock
        self._store = store
        self._audit = audit
        self._configured = frozenset(n.lower() for n in configured)

    async def is_blocked(self, server_name: str) -> bool:
        """Whether ``server_name`` (or its host without the port) is blocked."""
        name = server_name.lower()
        names = {name, _host(name)}
        if names & self._configured:
            return True
        for candidate in names:
            if await self._store.get(candidate) is not None:
                return True
        return False

    async def check_invitee(self, user_id: str) -> None:
        """403 for an invite to a user of a blocked server."""
        _, server = split_user_id(user_id)
        if server.lower() != self._server_name and await self.is_blocked(server):
            raise MatrixError(403, "This server does not talk to the invitee's server",
                              Codes.FORBIDDEN)

    async def filter_invites(self, invites: list[str]) -> None:
        for invitee in invites:
            await self.check_invitee(invitee)

    async def list_blocks(self, offset: int, limit: int) -> tuple[list[BlockEntry], int]:
        """The configured blocks first (sorted), then the stored ones."""
        configured = sorted(self._configured)
        rows, stored_total = await self._store.list_all(max(0, offset - len(configured)),
                                                        limit)
        head = [BlockEntry(n, CONFIG, None, None, None) for n in configured[offset:offset + limit]]
        stored = [_entry(r) for r in rows][:max(0, limit - len(head))]
        return head + stored, len(configured) + stored_total

    async def get_block(self, server_name: str) -> BlockEntry:
        name = normalise_server_name(server_name)
        row = await self._store.get(name)
        if row is not None:
            return _entry(row)
        if name in self._configured:
            return BlockEntry(name, CONFIG, None, None, None)
        raise MatrixError(404, "Server is not blocked", Codes.NOT_FOUND)

    async def block(self, actor: Actor, server_name: str, reason: str | None) -> BlockEntry:
        name = normalise_server_name(server_name)
        if name == self._server_name or _host(name) == _host(self._server_name):
            raise MatrixError(400, "Cannot block this server itself", Codes.INVALID_PARAM)
        await self._store.block(name, actor.requester.user_id, self._clock.time_msec(), reason)
        await audit_action(self._audit, actor, "block_server", name, server_name=name)
        return await self.get_block(name)

    async def unblock(self, actor: Actor, server_name: str) -> None:
        name = normalise_server_name(server_name)
        if not await self._store.unblock(name):
            if name in self._configured:
                raise MatrixError(400, "This server is blocked by the configuration "
                                  "(federation.blocked_servers)", Codes.INVALID_PARAM)
            raise MatrixError(404, "Server is not blocked", Codes.NOT_FOUND)
        await audit_action(self._audit, actor, "unblock_server", name, server_name=name)
