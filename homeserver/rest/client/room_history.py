"""GET /rooms/{roomId}/messages, /context/{eventId}, /members, /joined_members and
/timestamp_to_event: reading a room's history (see homeserver/handlers/pagination.py)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from homeserver.handlers.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MEMBERSHIPS,
    HistoryFilter,
    PaginationHandler,
    check_event_id,
)
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest, describe_validation_error
from homeserver.identifiers import check_room_id
from homeserver.rest.client.filters import _ROOM_EVENT_FILTER_PROPERTIES

_ROOM_EVENT_FILTER = Draft202012Validator(
    {"type": "object", "properties": _ROOM_EVENT_FILTER_PROPERTIES})
# Timestamps must fit the BIGINT column they are compared with.
MAX_TS = 2**63 - 1


def _direction(req: ApiRequest) -> str:
    value = req.query("dir")
    if value is None:
        raise MatrixError(400, "Missing parameter: dir", Codes.MISSING_PARAM)
    if value not in ("b", "f"):
        raise MatrixError(400, "Query parameter 'dir' must be 'b' or 'f'", Codes.INVALID_PARAM)
    return value


def _limit(req: ApiRequest) -> int:
    limit = req.query_int("limit", DEFAULT_LIMIT)
    assert limit is not None
    if limit < 0:
        raise MatrixError(400, "Query parameter 'limit' must be 0 or above", Codes.INVALID_PARAM)
    return min(limit, MAX_LIMIT)


def _filter(req: ApiRequest) -> HistoryFilter | None:
    """The ``filter`` query parameter: a RoomEventFilter as JSON (as in Synapse, not a
    filter id), checked against the spec's types."""
    raw = req.query("filter")
    if raw is None or not raw.strip():
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise MatrixError(400, "Invalid filter JSON", Codes.NOT_JSON) from e
    if not isinstance(parsed, dict):
        raise MatrixError(400, "Filter must be a JSON object", Codes.BAD_JSON)
    errors = sorted(_ROOM_EVENT_FILTER.iter_errors(parsed), key=lambda e: len(e.absolute_path))
    if errors:
        raise describe_validation_error(errors[0])
    return HistoryFilter.parse(parsed)


def _membership(req: ApiRequest, name: str) -> str | None:
    value = req.query(name)
    if value is not None and value not in MEMBERSHIPS:
        raise MatrixError(400, f"Query parameter '{name}' must be one of"
                          f" {', '.join(MEMBERSHIPS)}", Codes.INVALID_PARAM)
    return value


class RoomHistoryServlets:
    def __init__(self, pagination: PaginationHandler) -> None:
        self._p = pagination

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/rooms/{roomId}/messages"), self.on_messages,
                   allow_guest=True)
        router.add("GET", client_paths("/rooms/{roomId}/context/{eventId}"), self.on_context,
                   allow_guest=True)
        router.add("GET", client_paths("/rooms/{roomId}/members"), self.on_members,
                   allow_guest=True)
        router.add("GET", client_paths("/rooms/{roomId}/joined_members"), self.on_joined_members)
        router.add("GET", client_paths("/rooms/{roomId}/timestamp_to_event", ("v1",)),
                   self.on_timestamp_to_event)

    async def on_messages(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        direction = _direction(req)
        limit = _limit(req)
        event_filter = _filter(req)
        return 200, await self._p.get_messages(
            r.user_id, r.device_id, roomId, direction, req.query("from"), req.query("to"),
            limit, event_filter)

    async def on_context(self, req: ApiRequest, roomId: str, eventId: str  # noqa: N803
                         ) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        check_event_id(eventId)
        limit = _limit(req)
        event_filter = _filter(req)
        return 200, await self._p.get_context(r.user_id, r.device_id, roomId, eventId, limit,
                                              event_filter)

    async def on_members(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        chunk = await self._p.get_members(
            r.user_id, r.device_id, roomId, req.query("at"), _membership(req, "membership"),
            _membership(req, "not_membership"))
        return 200, {"chunk": chunk}

    async def on_joined_members(self, req: ApiRequest, roomId: str  # noqa: N803
                                ) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        return 200, {"joined": await self._p.get_joined_members(r.user_id, roomId)}

    async def on_timestamp_to_event(self, req: ApiRequest, roomId: str  # noqa: N803
                                    ) -> tuple[int, Any]:
        r = req.require_requester()
        check_room_id(roomId)
        ts = req.query_int("ts")
        if ts is None:
            raise MatrixError(400, "Missing parameter: ts", Codes.MISSING_PARAM)
        if not 0 <= ts <= MAX_TS:
            raise MatrixError(400, "Query parameter 'ts' is out of range", Codes.INVALID_PARAM)
        direction = _direction(req)
        return 200, await self._p.timestamp_to_event(r.user_id, roomId, ts, direction)
