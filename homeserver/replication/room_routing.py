"""Requests that create events go to the process writing the room (issue 18, event
persisters; Synapse routes an event to its room's writer the same way).

With ``stream_writers.events`` every process (main, client workers, the persisters) looks
at the room of each event-creating request (send, state, redact, membership, upgrade) as
it is matched: the room's writer (``writer_for``) serves it itself with the route as
registered; any other process forwards it there unchanged over internal HTTP
(forwarding.py: authentication, validation and rate limits run once, there). A
``createRoom`` is served by any events writer, which draws the new room's id among the
rooms it writes (room_creation.py ``owns_room``): the process receiving it serves it when
it is a writer, else forwards it to one chosen at random. A join or knock by alias goes
to the main process (which resolves aliases), and succeeds there only for a room it
writes: join by room id through a persister deployment (see the README, "Workers").
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from homeserver.config.workers import WorkersConfig
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

    def __init__(self, inner: Router, wc: WorkersConfig, forwarder: Forwarder) -> None:
        self._inner = inner
        self._wc = wc
        self._forwarder = forwarder
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


def wire_room_routing(resource: Any, router: Router, wc: WorkersConfig,
                      reactor: Any) -> Forwarder | None:
    """Route event-creating requests by room (None: one events writer, nothing to do).
    Call before any worker restriction changes the router's routes."""
    if not wc.event_writers or wc.replication_secret is None:
        return None
    forwarder = Forwarder(reactor, wc.replication_secret, lambda _api, _params: None)
    resource._router = RoomRouter(router, wc, forwarder)  # noqa: SLF001
    return forwarder
