"""Reports of events, rooms and users, stored for admins (reporter, target, reason,
score); the reported content is never copied.

As in Synapse: an event must be one the reporter is joined to the room of and may see
(404 otherwise, the same answer as for an unknown event, so reports cannot probe
history); an unknown room is a 404; a user report always succeeds and is only stored for
an existing local user (the spec lets servers hide who exists).
"""

from __future__ import annotations

from homeserver.clock import Clock
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import EventStore
from storage.stores.reports import ReportStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserStore


class ReportingHandler:
    def __init__(self, server_name: str, clock: Clock, store: ReportStore, events: EventStore,
                 members: RoomMemberStore, visibility: VisibilityHandler,
                 creation: EventCreationHandler, users: UserStore) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._events = events
        self._members = members
        self._visibility = visibility
        self._creation = creation
        self._users = users

    async def report_event(self, reporter: str, room_id: str, event_id: str,
                           reason: str | None, score: int | None) -> None:
        not_found = MatrixError(404, "The event was not found or you are not joined to the room.",
                                Codes.NOT_FOUND)
        membership = await self._members.get_membership(reporter, room_id)
        if membership is None or membership.membership != "join":
            raise not_found
        event = await self._events.get_event(event_id)
        if (event is None or event.room_id != room_id
                or not await self._visibility.filter_events(reporter, [event])):
            raise not_found
        await self._store.add_report("event", reporter, self._clock.time_msec(), room_id=room_id,
                                     event_id=event_id, reason=reason, score=score)

    async def report_room(self, reporter: str, room_id: str, reason: str) -> None:
        try:
            await self._creation.room_version(room_id)
        except MatrixError as e:
            raise MatrixError(404, "The room was not found.", Codes.NOT_FOUND) from e
        await self._store.add_report("room", reporter, self._clock.time_msec(), room_id=room_id,
                                     reason=reason)

    async def report_user(self, reporter: str, user_id: str, server_name: str,
                          reason: str) -> None:
        """Stored only for an existing local user; the caller answers 200 either way."""
        if server_name == self._server_name and await self._users.user_exists(user_id):
            await self._store.add_report("user", reporter, self._clock.time_msec(),
                                         target_user_id=user_id, reason=reason)
