"""The rooms admin API's reads and room blocking (Synapse's ``/_synapse/admin/v1/rooms``).

Admins see room metadata only: the list, the details, the members and the current
state's (type, state_key, sender, event_id, origin_server_ts), never an event's content
(issue 15: admins never read message content). Name, topic, aliases and the settings
shown in the details are the room's public summary, as the room directory shows them.

Blocking a room: local users may no longer join it, be invited to it or create a room
with its id (M_FORBIDDEN); :meth:`AdminRoomsHandler.check_room_not_blocked` and
:meth:`check_alias_not_blocked` are the hooks the membership, room creation and alias
handlers call. Every block and unblock is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.auth.requester import Requester
from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.admin_actions import record_admin_action
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from storage.stores.admin_rooms import ORDER_COLUMNS, AdminRoomStore, RoomFilter, RoomListRow
from storage.stores.events import EventStore

MAX_MEMBERS = 10_000  # a members answer is bounded; Synapse has no paging here either
MAX_STATE = 10_000
# The list's order_by values (Synapse's names; federatable is not offered).
ORDER_BY = frozenset(ORDER_COLUMNS)


@dataclass(frozen=True)
class RoomListQuery:
    search: str | None
    public: bool | None
    empty: bool | None
    order_by: str
    forwards: bool
    offset: int
    limit: int


class AdminRoomsHandler:
    def __init__(self, clock: Clock, store: AdminRoomStore, events: EventStore,
                 audit: SecurityEventRecorder) -> None:
        self._clock = clock
        self._store = store
        self._events = events
        self._audit = audit

    # -- reads ---------------------------------------------------------------------------

    async def list_rooms(self, q: RoomListQuery) -> dict[str, Any]:
        """Synapse's answer: rooms, offset, total_rooms, next_batch / prev_batch."""
        rows, total = await self._store.list_rooms(RoomFilter(q.search, q.public, q.empty),
                                                   q.order_by, q.forwards, q.offset, q.limit)
        settings = await self._settings(rows)
        out: dict[str, Any] = {
            "rooms": [_summary(r, settings) for r in rows],
            "offset": q.offset, "total_rooms": total,
        }
        if q.offset + len(rows) < total:
            out["next_batch"] = q.offset + len(rows)
        if q.offset > 0:
            out["prev_batch"] = max(q.offset - q.limit, 0)
        return out

    async def room_details(self, room_id: str) -> dict[str, Any]:
        row = await self._require_room(room_id)
        out = _summary(row, await self._settings([row]))
        out.update(topic=row.topic, avatar=row.avatar,
                   blocked=await self._store.room_blocked_by(room_id) is not None)
        return out

    async def members(self, room_id: str) -> dict[str, Any]:
        await self._require_room(room_id)
        members = await self._store.joined_members(room_id, MAX_MEMBERS)
        return {"members": members, "total": len(members)}

    async def state(self, room_id: str) -> dict[str, Any]:
        """The current state as metadata: no ``content`` (a deliberate difference from
        Synapse, whose answer holds the full events)."""
        await self._require_room(room_id)
        entries = await self._store.state_metadata(room_id, MAX_STATE)
        return {"state": [
            {"type": e.type, "state_key": e.state_key, "sender": e.sender,
             "event_id": e.event_id, "origin_server_ts": e.origin_server_ts}
            for e in entries]}

    async def _require_room(self, room_id: str) -> RoomListRow:
        row = await self._store.get_room(room_id)
        if row is None:
            raise MatrixError(404, "Room not found", Codes.NOT_FOUND)
        return row

    async def _settings(self, rows: list[RoomListRow]) -> dict[str, Event]:
        """The create and encryption events of a page of rooms, in one read: the list
        shows two of their settings (``federatable``, the encryption algorithm)."""
        ids = [i for r in rows for i in (r.create_event_id, r.encryption_event_id) if i]
        return await self._events.get_events(ids)

    # -- blocking ------------------------------------------------------------------------

    async def set_blocked(self, requester: Requester, room_id: str, block: bool) -> None:
        """Block or unblock (a room this server does not know may be blocked ahead)."""
        if block:
            await self.block(requester.user_id, room_id)
        else:
            await self._store.unblock_room(room_id)
        await record_admin_action(self._audit, requester,
                                  {"action": "block_room" if block else "unblock_room",
                                   "room_id": room_id})

    async def block(self, user_id: str, room_id: str) -> None:
        """Block without auditing (the caller audits: an admin request or a shutdown)."""
        await self._store.block_room(room_id, user_id, self._clock.time_msec())

    async def blocked_by(self, room_id: str) -> str | None:
        return await self._store.room_blocked_by(room_id)

    async def check_room_not_blocked(self, room_id: str) -> None:
        """The hook for joins, invites and room creation: M_FORBIDDEN if blocked."""
        if await self._store.room_blocked_by(room_id) is not None:
            raise MatrixError(403, "This room has been blocked on this server",
                              Codes.FORBIDDEN)

    async def check_alias_not_blocked(self, alias: str) -> None:
        """The hook for alias creation: an alias removed by a room shutdown stays taken."""
        if await self._store.is_alias_blocked(alias):
            raise MatrixError(403, "This room alias has been blocked on this server",
                              Codes.FORBIDDEN)


def _summary(row: RoomListRow, settings: dict[str, Event]) -> dict[str, Any]:
    """One room as Synapse's list shows it (metadata only)."""
    create = settings.get(row.create_event_id or "")
    encryption = settings.get(row.encryption_event_id or "")
    algorithm = encryption.content.get("algorithm") if encryption is not None else None
    return {
        "room_id": row.room_id, "name": row.name, "canonical_alias": row.canonical_alias,
        "joined_members": row.joined_members, "joined_local_members": row.joined_local_members,
        "version": row.version, "creator": row.creator,
        "encryption": algorithm if isinstance(algorithm, str) else None,
        "federatable": create is None or create.content.get("m.federate", True) is not False,
        "public": row.public, "join_rules": row.join_rules, "guest_access": row.guest_access,
        "history_visibility": row.history_visibility, "state_events": row.state_events,
        "room_type": row.room_type,
    }
