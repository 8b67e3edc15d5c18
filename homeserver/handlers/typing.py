"""Typing notifications: who is typing in which room, held in memory only.

A typing flag lives for the client's timeout (default 30 s, capped so a client cannot
pin itself "typing" for hours) and then expires on the :class:`Clock`. Every change
moves the ``typing`` stream on; /sync sends a room's full list of typing users
(``m.typing``) when it changed after the client's position, since the spec tells
clients to *replace* their list with each event.

Positions are not persisted. So that a client's token from before a restart is not
"ahead" of the restarted server (and would miss every change until the counter caught
up), positions never fall below the current time in milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.http.errors import Codes, MatrixError, forbidden
from homeserver.identifiers import check_room_id, split_user_id
from homeserver.notifier import NotifierInterface
from storage.stores.room_members import RoomMemberStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000


class TypingHandler:
    """Sets and expires typing flags; an ``EphemeralSource`` for /sync."""

    name = "typing"

    def __init__(self, clock: Clock, members: RoomMemberStore, notifier: NotifierInterface,
                 presence: Any = None) -> None:
        self._clock = clock
        self._members = members
        self._notifier = notifier
        self._presence = presence  # PresenceHandler: typing counts as activity
        self._typing: dict[str, dict[str, IDelayedCall]] = {}  # room -> user -> expiry
        self._changed_at: dict[str, int] = {}  # room -> position of its last change
        self._position = clock.time_msec()
        # Told each room's new typing EDU (application services with receive_ephemeral).
        self.on_edu: list[Callable[[JsonDict], None]] = []
        # Shadow-bans (homeserver/handlers/shadow_ban.py): async fn(user_id) -> banned.
        self.shadow_banned: Callable[[str], Awaitable[bool]] | None = None

    def current_position(self) -> int:
        return self._position

    async def set_typing(self, requester: str, device_id: str | None, user_id: str,
                         room_id: str, typing: bool, timeout_ms: int | None) -> None:
        """PUT /rooms/{roomId}/typing/{userId}: only for yourself, only where joined."""
        split_user_id(user_id)
        check_room_id(room_id)
        if requester != user_id:
            raise forbidden("Cannot set another user's typing state")
        membership = await self._members.get_membership(user_id, room_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")
        if self.shadow_banned is not None and await self.shadow_banned(user_id):
            return  # as Synapse: a shadow-banned user's typing reaches nobody
        if typing:
            if timeout_ms is None:
                timeout_ms = DEFAULT_TIMEOUT_MS
            if timeout_ms < 0:
                raise MatrixError(400, "timeout must not be negative", Codes.INVALID_PARAM)
            self._start(room_id, user_id, min(timeout_ms, MAX_TIMEOUT_MS))
        else:
            self._stop(room_id, user_id)
        if self._presence is not None:
            await self._presence.bump_active(user_id, device_id)

    async def set_remote_typing(self, user_id: str, room_id: str, typing: bool) -> bool:
        """An ``m.typing`` EDU from the user's own server (federation checked that):
        applied if the user is joined to the room; remote typing lasts the default
        timeout, as in Synapse (the EDU carries none)."""
        membership = await self._members.get_membership(user_id, room_id)
        if membership is None or membership.membership != "join":
            return False
        if typing:
            self._start(room_id, user_id, DEFAULT_TIMEOUT_MS)
        else:
            self._stop(room_id, user_id)
        return True

    def _start(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        room = self._typing.setdefault(room_id, {})
        previous = room.get(user_id)
        if previous is not None and previous.active():
            previous.cancel()  # still typing: only the expiry moves, nothing to tell anyone
        room[user_id] = self._clock.call_later(timeout_ms / 1000, self._expire, room_id, user_id)
        if previous is None:
            self._changed(room_id)

    def _stop(self, room_id: str, user_id: str) -> None:
        room = self._typing.get(room_id)
        call = room.pop(user_id, None) if room else None
        if call is None:
            return
        if call.active():
            call.cancel()
        if not room:
            self._typing.pop(room_id, None)
        self._changed(room_id)

    def _expire(self, room_id: str, user_id: str) -> None:
        room = self._typing.get(room_id)
        if room is not None and user_id in room:
            room.pop(user_id)
            if not room:
                self._typing.pop(room_id, None)
            self._changed(room_id)

    def _changed(self, room_id: str) -> None:
        self._position = max(self._position + 1, self._clock.time_msec())
        self._changed_at[room_id] = self._position
        self._notifier.notify(room_ids=[room_id])
        if self.on_edu:
            edu = {"type": "m.typing", "room_id": room_id,
                   "content": {"user_ids": self.typing_users(room_id)}}
            for listener in self.on_edu:
                listener(edu)

    def after_persist(self, event: Event) -> None:
        """Whoever stops being joined (leave, kick, ban) stops typing at once."""
        if event.type == "m.room.member" and event.state_key is not None \
                and event.content.get("membership") != "join":
            self._stop(event.room_id, event.state_key)

    def typing_users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, {}))

    # EphemeralSource

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool:
        return any(self._changed_at.get(r, 0) > since for r in room_ids)

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        out: dict[str, list[JsonDict]] = {}
        for room_id in room_ids:
            if self._changed_at.get(room_id, 0) <= since:
                continue
            users = self.typing_users(room_id)
            if since == 0 and not users:
                continue  # an initial sync needs no "nobody is typing"
            out[room_id] = [{"type": "m.typing", "content": {"user_ids": users}}]
        return out

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int
                             ) -> dict[str, Any]:
        return {}
