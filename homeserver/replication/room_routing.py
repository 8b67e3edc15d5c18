"""Requests that create events go to the process writing the room (issue 18, event
persisters; Synapse routes an event to its room's writer the same way).

With ``stream_writers.events`` every process (main, client workers, the persisters) looks
at the room of each event-creating request (send, state, redact, membership, upgrade) as
it is matched: the room's writer (``writer_for``) serves it itself with the route as
registered; any other process forwards it there unchanged over internal HTTP
(forwarding.py: authentication, validation and rate limits run once, there). A
``createRoom`` is served by any events writer, which draws the new room's id among the
rooms it writes (room_creation.py ``owns_room``): the process receiving it serves it when
it is a writer, else forwards it to one chosen at random.

A join or knock by alias is resolved when it is routed: an alias of this server's
directory (the shared database) names the room, and the request is dispatched again as
the same request by room id (served here or forwarded to the room's writer, like any
other); an alias the directory does not hold (another server's, or unknown) goes to the
main process, which asks its server or answers 404. Authentication and rate limits run
once, on the process that serves the request.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from homeserver.config.workers import WorkersConfig
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Route, Router
from homeserver.http.server import decode_path_param
from homeserver.replication.forwarding import Forwarder
from homeserver.replication.multi_writer import writer_for

_ROOM_EVENT_SUFFIXES = {
    ("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("POST", "/rooms/{roomId}/send/{eventType}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/"),
    ("PUT", "/rooms/{roomId}/state/{eventType}"),
    ("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("POST", "/rooms/{roomId}/join"),
    ("POST", "/rooms/{roomId}/invite"),
    ("POST", "/rooms/{roomId}/leave"),
    ("POST", "/rooms/{roomId}/kick"),
    ("POST", "/rooms/{roomId}/ban"),
    ("POST", "/rooms/{roomId}/unban"),
    ("POST", "/rooms/{roomId}/upgrade"),
    ("POST", "/join/{roomIdOrAlias}"),
    ("POST", "/knock/{roomIdOrAlias}"),
}
_CREATE_SUFFIX = ("POST", "/createRoom")
_CLIENT_PREFIX = "/_matrix/client/"


def _suffix(template: str) -> str | None:
    if not template.startswith(_CLIENT_PREFIX):
        return None
    rest = template[len(_CLIENT_PREFIX):]
    _version, slash, tail = rest.partition("/")
    return "/" + tail if slash else None


def routed_by_room(method: str, template: str) -> bool:
    """Whether ``method template`` creates events in a room (or a room)."""
    suffix = _suffix(template)
    return suffix is not None and ((method, suffix) in _ROOM_EVENT_SUFFIXES
                                   or (method, suffix) == _CREATE_SUFFIX)


class RoomRouter:
    """The router as the process's MatrixResource sees it: event-creating routes are
    resolved per request to the route itself (this process writes the room) or to a
    forward to the room's writer. Everything else is the wrapped router's."""

    def __init__(self, inner: Router, wc: WorkersConfig, forwarder: Forwarder,
                 resource: Any = None) -> None:
        self._inner = inner
        self._wc = wc
        self._forwarder = forwarder
        self._resource = resource  # the MatrixResource: a request by alias is dispatched again
        # alias -> (room_id, creator) or None: the local directory (set by the app).
        self.resolve_alias: Callable[[str], Awaitable[tuple[str, str] | None]] | None = None
        # The raw path whose next match is served here as registered (see _by_alias).
        self._serve_next: str | None = None
        # The routes as registered, before any worker restriction turns them.
        self._originals = {(r.method, r.template): dataclasses.replace(r, extra=dict(r.extra))
                           for r in inner.routes if routed_by_room(r.method, r.template)}
        self._forwards: dict[tuple[str, str, str], Route] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def owner(self, method: str, template: str, raw_params: dict[str, str]) -> str:
        """The process that serves this request."""
        wc = self._wc
        if _suffix(template) == _CREATE_SUFFIX[1]:
            if wc.instance in wc.event_writers:
                return wc.instance
            return random.choice(wc.event_writers)  # noqa: S311 (load spreading only)
        raw = raw_params.get("roomId") or raw_params.get("roomIdOrAlias") or ""
        room = decode_path_param(raw)
        return writer_for(wc, room) if room.startswith("!") else wc.main_name

    def match(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], bool]:
        route, raw_params, known = self._inner.match(method, raw_path)
        if route is None:
            return route, raw_params, known
        original = self._originals.get((route.method, route.template))
        if original is None:
            return route, raw_params, known
        if self._serve_next is not None and self._serve_next == raw_path:
            self._serve_next = None
            return original, raw_params, known
        target = decode_path_param(raw_params.get("roomIdOrAlias") or "")
        if target.startswith("#") and self.resolve_alias is not None \
                and self._resource is not None:
            return self._alias_route(original), raw_params, known
        owner = self.owner(route.method, route.template, raw_params)
        if owner == self._wc.instance:
            return original, raw_params, known
        return self._forward_route(original, owner), raw_params, known

    def _forward_route(self, original: Route, owner: str) -> Route:
        key = (original.method, original.template, owner)
        route = self._forwards.get(key)
        if route is None:
            endpoint = self._wc.endpoint(owner)
            forwarder = self._forwarder

            async def forward(api: Any, **_params: str) -> tuple[int, Any]:
                return await forwarder.forward(api, endpoint)

            route = self._forwards[key] = dataclasses.replace(
                original, handler=forward, auth="none", json_body=False,
                body_validator=None, extra={**original.extra, "forwarded": True})
        return route


    def _alias_route(self, original: Route) -> Route:
        key = (original.method, original.template, "#alias")
        route = self._forwards.get(key)
        if route is None:
            async def by_alias(api: Any, **params: str) -> tuple[int, Any]:
                return await self._by_alias(api, params["roomIdOrAlias"])

            route = self._forwards[key] = dataclasses.replace(
                original, handler=by_alias, auth="none", json_body=False,
                body_validator=None, extra={**original.extra, "forwarded": True})
        return route

    async def _by_alias(self, api: Any, alias: str) -> tuple[int, Any]:
        """Resolve the alias in the directory, then dispatch the request again: by room
        id when found, else as it came on main (forwarded there from any other process).
        The second match happens before the dispatch's first await (server.py), so the
        mark on the path applies to this request alone."""
        assert self.resolve_alias is not None
        request = api.raw
        raw_path = request.path.decode("ascii", "replace")
        found = await self.resolve_alias(alias)
        if found is None:
            main = self._wc.main_name
            if main != self._wc.instance:
                endpoint = self._wc.endpoint(main)
                if endpoint is None:
                    raise MatrixError(404, "Room alias not found", Codes.NOT_FOUND)
                return await self._forwarder.forward(api, endpoint)
            self._serve_next = raw_path
        else:
            segment = raw_path.rsplit("/", 1)[-1]
            raw_path = raw_path[:-len(segment)] + quote(found[0], safe="")
            _path, sep, query = request.uri.decode("ascii", "replace").partition("?")
            request.path = raw_path.encode("ascii")
            request.uri = (raw_path + sep + query).encode("ascii")
        try:
            status, body, _headers = await self._resource._dispatch(  # noqa: SLF001
                request, api.method, raw_path)
        finally:
            self._serve_next = None
        return status, body

    async def close(self) -> None:
        await self._forwarder.close()


def wire_room_routing(resource: Any, router: Router, wc: WorkersConfig,
                      reactor: Any) -> RoomRouter | None:
    """Route event-creating requests by room (None: one events writer, nothing to do).
    Call before any worker restriction changes the router's routes. Set the returned
    router's ``resolve_alias`` to route joins and knocks by alias."""
    if not wc.event_writers or wc.replication_secret is None:
        return None
    forwarder = Forwarder(reactor, wc.replication_secret, lambda _api, _params: None)
    room_router = RoomRouter(router, wc, forwarder, resource)
    resource._router = room_router  # noqa: SLF001
    return room_router
