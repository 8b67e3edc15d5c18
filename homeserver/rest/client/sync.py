"""GET /sync."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from homeserver.handlers.filters import FilterHandler
from homeserver.handlers.presence import PresenceHandler
from homeserver.handlers.sync import SyncHandler, SyncRequest, SyncToken
from homeserver.handlers.sync_filter import SyncFilter
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest, describe_validation_error, json_body_problem
from homeserver.rest.client.filters import FILTER_SCHEMA

_FILTER_VALIDATOR = Draft202012Validator(FILTER_SCHEMA)

MAX_TIMEOUT_MS = 5 * 60 * 1000


class SyncServlets:
    def __init__(self, sync: SyncHandler, filters: FilterHandler,
                 presence: PresenceHandler | None = None) -> None:
        self._sync = sync
        self._filters = filters
        self._presence = presence

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/sync"), self.on_sync, allow_guest=True)

    async def on_sync(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        since_raw = req.query("since")
        since = SyncToken.parse(since_raw) if since_raw else None
        timeout = max(0, min(req.query_int("timeout", 0) or 0, MAX_TIMEOUT_MS))
        set_presence = req.query("set_presence", "online")
        if set_presence not in ("online", "offline", "unavailable"):
            raise MatrixError(400, "Invalid set_presence", Codes.INVALID_PARAM)
        sync_filter = await self._filter(r.user_id, req.query("filter"))
        if self._presence is not None:
            await self._presence.user_syncing(r.user_id, r.device_id, set_presence, timeout)
        # A long-poll that has to wait comes back parked (a SyncPoll, homeserver/http/
        # longpoll.py): the HTTP layer answers it when it fires; nothing awaits here.
        result = await self._sync.sync_or_park(SyncRequest(
            user_id=r.user_id, device_id=r.device_id, since=since, timeout_ms=timeout,
            full_state=req.query_bool("full_state", False), filter=sync_filter,
        ))
        return 200, result

    async def _filter(self, user_id: str, raw: str | None) -> SyncFilter:
        return await resolve_filter(self._filters, user_id, raw)


def parse_inline_filter(parsed: Any) -> SyncFilter:
    """An inline filter object, validated like POST /filter (shared with the WebSocket)."""
    if not isinstance(parsed, dict):
        raise MatrixError(400, "Filter must be a JSON object", Codes.BAD_JSON)
    errors = sorted(_FILTER_VALIDATOR.iter_errors(parsed), key=lambda e: len(e.absolute_path))
    if errors:
        raise describe_validation_error(errors[0])
    return SyncFilter.parse(parsed)


async def resolve_filter(filters: FilterHandler, user_id: str, raw: str | None) -> SyncFilter:
    """The ``filter`` parameter: absent, inline JSON, or the id of a stored filter."""
    if raw is None:
        return SyncFilter.parse({})
    if raw.lstrip().startswith("{"):
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise MatrixError(400, "Invalid filter JSON", Codes.BAD_JSON) from e
        problem = json_body_problem(parsed)
        if problem:
            raise MatrixError(400, problem, Codes.BAD_JSON)
        return parse_inline_filter(parsed)
    try:
        stored = await filters.get_filter(user_id, raw)
    except MatrixError as e:
        raise MatrixError(400, "No such filter", Codes.INVALID_PARAM) from e
    return SyncFilter.parse(stored)
