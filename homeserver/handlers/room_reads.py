"""Reading room state and single events, with membership and history visibility
enforced (the read paths of /state, /event and /joined_rooms)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import EventStore
from storage.stores.room_members import RoomMemberStore


class RoomReadHandler:
    def __init__(
        self,
        events: EventStore,
        members: RoomMemberStore,
        visibility: VisibilityHandler,
        creation: EventCreationHandler,
        aggregations: Callable[[str, str | None, Sequence[Event], bool],
                               Awaitable[dict[str, dict[str, Any]]]] | None = None,
    ) -> None:
        self._events = events
        self._members = members
        self._visibility = visibility
        self._creation = creation
        # Bundled aggregations (RelationsHandler.bundle): (user, device, events,
        # include_room_id) -> {event_id: unsigned["m.relations"]}.
        self.aggregations = aggregations
        # The batch serializer (ClientEventSerializer.serialize): GET /event serves the
        # event as every other read path does (redactions, erased senders, aggregations).
        self.serializer: Callable[[Sequence[Event], str, str | None],
                                  Awaitable[list[dict[str, Any]]]] | None = None

    async def _state_ids(self, user_id: str, room_id: str) -> dict[tuple[str, str], str]:
        await self._creation.room_version(room_id)  # 404 for unknown rooms
        allowed, at = await self._visibility.can_see_room_state(user_id, room_id)
        if not allowed:
            raise MatrixError(403, "You are not a member of this room", Codes.FORBIDDEN)
        if at is None:
            return (await self._creation.snapshot(room_id)).state_ids
        # Left or banned: the state as it was when they left.
        membership = await self._members.get_membership(user_id, room_id)
        assert membership is not None
        group = await self._events.get_state_group_for_event(membership.event_id)
        return await self._events.get_state_for_group(group) if group is not None else {}

    async def get_state(self, user_id: str, room_id: str) -> list[Event]:
        ids = await self._state_ids(user_id, room_id)
        found = await self._events.get_events(ids.values())
        return [found[i] for i in ids.values() if i in found]

    async def get_state_event(self, user_id: str, room_id: str, event_type: str,
                              state_key: str) -> Event:
        ids = await self._state_ids(user_id, room_id)
        event_id = ids.get((event_type, state_key))
        event = await self._events.get_event(event_id) if event_id else None
        if event is None:
            raise MatrixError(404, "Event not found.", Codes.NOT_FOUND)
        return event

    async def get_event(self, user_id: str, room_id: str, event_id: str
                        ) -> tuple[Event, Event | None, dict[str, Any] | None]:
        """(event, its redaction or None, pruned PDU when redacted)."""
        event = await self._events.get_event(event_id)
        # Outliers (e.g. history an admin purged) are out of the timeline: not served.
        if event is None or event.room_id != room_id or event.internal.outlier:
            raise MatrixError(404, "Event not found.", Codes.NOT_FOUND)
        if not await self._visibility.filter_events(user_id, [event]):
            raise MatrixError(404, "Event not found.", Codes.NOT_FOUND)
        return await self.with_redaction(event)

    async def get_client_event(self, user_id: str, device_id: str | None, room_id: str,
                               event_id: str) -> dict[str, Any] | None:
        """The client form of a visible event through the serializer; None if no
        serializer is wired (the caller then serializes :meth:`get_event`'s answer)."""
        if self.serializer is None:
            return None
        event, _, _ = await self.get_event(user_id, room_id, event_id)
        return (await self.serializer([event], user_id, device_id))[0]

    async def with_redaction(self, event: Event
                             ) -> tuple[Event, Event | None, dict[str, Any] | None]:
        redactions = await self._events.get_redaction_ids([event.event_id])
        if event.event_id not in redactions:
            return event, None, None
        redaction = await self._events.get_event(redactions[event.event_id])
        return event, redaction, prune_event_dict(event.pdu, event.room_version)

    async def bundled(self, user_id: str, device_id: str | None, events: Sequence[Event]
                      ) -> dict[str, dict[str, Any]]:
        """event id -> ``unsigned["m.relations"]`` for the events that have any."""
        if self.aggregations is None or not events:
            return {}
        return await self.aggregations(user_id, device_id, events, True)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [m.room_id for m in await self._members.rooms_for_user(user_id)]
