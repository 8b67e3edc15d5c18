"""Redacting events (PUT /rooms/{roomId}/redact/{eventId}/{txnId}).

The event auth rules only ask that the sender may send ``m.room.redaction``; whether
a redaction may *apply* is decided when it is served. For our own users we decide it
up front, as Synapse does, inside the room's send lock against the state the
redaction is authorised with: one's own events need nothing more; anyone else's need
the ``redact`` power level. An event we do not have may be redacted by someone with
that level (it may arrive later over federation) and is a 404 for anyone else. The
create event and server ACLs are never redacted, nor events of other rooms.
"""

from __future__ import annotations

from typing import Any

from homeserver.events.power_levels import get_named_level, get_user_power_level
from homeserver.handlers.event_creation import EventCreationHandler, RoomSnapshot
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import EventStore

_AUTH_KEYS = (("m.room.create", ""), ("m.room.power_levels", ""))


class RedactionHandler:
    def __init__(self, creation: EventCreationHandler, events: EventStore) -> None:
        self._creation = creation
        self._events = events

    async def redact(self, user_id: str, device_id: str | None, room_id: str, event_id: str,
                     txn_id: str, content: dict[str, Any]) -> str:
        """Returns the redaction's event id; a retried txn returns the first one."""
        await self._creation.room_version(room_id)  # 404 for unknown rooms
        device = device_id or ""
        # /send and /redact share the txn table: a txn id already spent on another
        # request must not silently return that other event.
        existing_id = await self._events.get_event_by_txn(room_id, user_id, device, txn_id)
        if existing_id is not None:
            existing = await self._events.get_event(existing_id)
            if existing is not None and existing.redacts != event_id:
                raise MatrixError(400, "Transaction ID already used for another request",
                                  Codes.INVALID_PARAM)

        async def check(snap: RoomSnapshot) -> None:
            await self._check(user_id, room_id, event_id, snap)

        # Only the reason rides along: the request body is not event content.
        kept = {"reason": content["reason"]} if isinstance(content.get("reason"), str) else {}
        event = await self._creation.send(room_id, user_id, "m.room.redaction", kept,
                                          txn=(device, txn_id), redacts=event_id, check=check)
        return event.event_id

    async def _check(self, user_id: str, room_id: str, event_id: str,
                     snap: RoomSnapshot) -> None:
        target = await self._events.get_event(event_id)
        if target is not None:
            if target.room_id != room_id:
                raise MatrixError(400, "Cannot redact event from a different room",
                                  Codes.UNKNOWN)
            if target.type == "m.room.create":
                raise MatrixError(403, "Redacting create events is not permitted",
                                  Codes.FORBIDDEN)
            if target.type == "m.room.server_acl":
                raise MatrixError(403, "Redacting server ACL events is not permitted",
                                  Codes.FORBIDDEN)
            if target.sender == user_id:
                return
        ids = {k: snap.state_ids[k] for k in _AUTH_KEYS if k in snap.state_ids}
        found = await self._events.get_events(ids.values())
        auth_state = {k: found[v] for k, v in ids.items() if v in found}
        create = auth_state.get(("m.room.create", ""))
        if create is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        level = get_user_power_level(user_id, auth_state, create)
        if level >= get_named_level("redact", auth_state):
            return
        if target is None:
            raise MatrixError(404, "Could not find the event to redact", Codes.NOT_FOUND)
        raise MatrixError(403, "You don't have permission to redact events", Codes.FORBIDDEN)

