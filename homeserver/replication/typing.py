"""Typing notifications on a client worker: a mirror of the main process's.

Typing lives in the main process's memory (homeserver/handlers/typing.py): every change
there is published (the handler's ``on_edu``) with its position, and a worker's
:class:`TypingMirror` replaces the typing handler as /sync's ``typing`` source. Positions
are the main process's (milliseconds-based, so they never go back across restarts).
A flag older than the longest typing timeout is dropped even if its end was missed
(Redis down at that moment)."""

from __future__ import annotations

from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.typing import MAX_TIMEOUT_MS

JsonDict = dict[str, Any]


class TypingMirror:
    name = "typing"

    def __init__(self, clock: Clock, start: int) -> None:
        self._clock = clock
        self._position = start
        # room -> (user ids typing, position of the change, local time received in ms)
        self._rooms: dict[str, tuple[list[str], int, int]] = {}

    def current_position(self) -> int:
        return self._position

    def apply(self, room_id: str, users: list[str], position: int) -> bool:
        """A change published by the main process; False when stale (already newer)."""
        previous = self._rooms.get(room_id)
        if previous is not None and previous[1] >= position:
            return False
        self._position = max(self._position, position)
        if users:
            self._rooms[room_id] = (sorted(users), position, self._clock.time_msec())
        else:
            self._rooms[room_id] = ([], position, self._clock.time_msec())
        return True

    def _users(self, room_id: str) -> list[str]:
        entry = self._rooms.get(room_id)
        if entry is None:
            return []
        if entry[0] and self._clock.time_msec() - entry[2] > MAX_TIMEOUT_MS:
            return []  # its end was missed: no flag outlives the longest timeout
        return entry[0]

    # EphemeralSource (the same answers as TypingHandler's)

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool:
        return any(r in self._rooms and self._rooms[r][1] > since for r in room_ids)

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        out: dict[str, list[JsonDict]] = {}
        for room_id in room_ids:
            entry = self._rooms.get(room_id)
            if entry is None or entry[1] <= since:
                continue
            users = self._users(room_id)
            if since == 0 and not users:
                continue
            out[room_id] = [{"type": "m.typing", "content": {"user_ids": users}}]
        return out

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int
                             ) -> dict[str, Any]:
        return {}
