"""The deprecated pre-/sync API Synapse still serves: GET /events, GET /events/{eventId},
GET /initialSync and GET /rooms/{roomId}/initialSync. Parsing and validation only; the
reads (and the /events long-poll, shared with /sync) are in homeserver/handlers/legacy.py.
Integers are bounded: a bad ``limit`` or ``timeout`` is 400 M_INVALID_PARAM at once.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.legacy import LegacyHandler
from homeserver.handlers.pagination import check_event_id
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id

DEFAULT_TIMEOUT_MS = 30_000  # Synapse's default long-poll for /events
DEFAULT_INITIAL_LIMIT = 10


class LegacyServlets:
    def __init__(self, legacy: LegacyHandler) -> None:
        self._legacy = legacy

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/events"), self.on_events, allow_guest=True)
        router.add("GET", client_paths("/events/{eventId}"), self.on_event, allow_guest=True)
        router.add("GET", client_paths("/initialSync"), self.on_initial_sync)
        router.add("GET", client_paths("/rooms/{roomId}/initialSync"), self.on_room_initial_sync,
                   allow_guest=True)

    async def on_events(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        timeout = req.query_int("timeout", DEFAULT_TIMEOUT_MS)
        # A cap on the chunk (the handler caps it lower still); checked at once, as
        # Synapse does, rather than long-polling on a bad one (SyTest 80torture).
        limit = req.query_int("limit", None)
        room_id = req.query("room_id")
        if room_id is not None:
            check_room_id(room_id)
        return 200, await self._legacy.events(r.user_id, r.device_id, req.query("from"),
                                              timeout if timeout is not None else 0,
                                              room_id, r.is_guest, limit)

    async def on_event(self, req: ApiRequest, eventId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_event_id(eventId)
        return 200, await self._legacy.event(r.user_id, r.device_id, eventId)

    async def on_initial_sync(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._legacy.initial_sync(r.user_id, r.device_id, _limit(req),
                                                    req.query_bool("archived", False))

    async def on_room_initial_sync(self, req: ApiRequest, roomId: str  # noqa: N803
                                   ) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        return 200, await self._legacy.room_initial_sync(r.user_id, r.device_id, roomId,
                                                         _limit(req))


def _limit(req: ApiRequest) -> int:
    limit = req.query_int("limit", DEFAULT_INITIAL_LIMIT)
    if limit is None or limit < 0:
        raise MatrixError(400, "limit must be a non-negative integer", Codes.INVALID_PARAM)
    return limit
