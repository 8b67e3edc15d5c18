"""Which endpoints a ``client`` worker serves, and the refusal of the others.

A client worker is a reader: it never writes a stream (the main process is the one
writer of every stream in this first slice), so anything that writes is refused with
404 ``M_UNRECOGNIZED`` and a message naming the fix: route that endpoint to the main
process in the reverse proxy (as Synapse's worker documentation does with path
routing). The route table (README "Workers"):

=================================================  ===============
requests                                           process
=================================================  ===============
``GET /_matrix/client/*/sync``, ``/events``        client worker
``GET /_matrix/client/*/rooms/{id}/messages``,
``/context``, ``/members``, ``/state``, ``/event``
``/relations``, ``/threads``, ``/hierarchy``
``GET /profile/*``, ``/presence/*/status``
``GET /keys/changes``, ``POST /keys/query``
``GET /joined_rooms``, ``/account/whoami``,
``/capabilities``, ``/versions``, ``/pushrules``,
``/user/*/account_data``, ``/devices`` ...
``POST /search``, ``/user_directory/search``,
``/publicRooms``
the sync WebSocket                                 client worker
every other request (every write: send, state,
membership, login, logout, receipts, typing,
keys upload/claim, filters, media, admin API,
federation)                                        main process
=================================================  ===============

Every ``GET`` under ``/_matrix/client/`` except media and SSO redirects is a read.

When the deployment forwards writes (the main process's ``replication`` endpoint and
secret are configured, homeserver/replication/forwarding.py), a client worker forwards
every other route to the main process instead of refusing it, except media (bodies and
files too big to relay through a worker: route them to the main process or a media
worker), so the table above is only an optimisation for the reverse proxy.
"""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Route, Router

# POST endpoints that only read (their path after /_matrix/client/<version>).
READ_POSTS = ("/keys/query", "/search", "/user_directory/search", "/publicRooms")
_VERSIONED = ("/_matrix/client/r0", "/_matrix/client/v3", "/_matrix/client/v1",
              "/_matrix/client/unstable")
# GET families under /_matrix/client that are not a client worker's to serve.
_GET_ELSEWHERE = ("/media/", "/login/sso", "/admin/")
_OWN_PREFIXES = ("/_matrix/", "/_synapse/", "/_parley/")

REFUSAL = ("This endpoint is served by the main process: route it there "
           "(see the README, 'Workers')")


def _suffix(template: str) -> str | None:
    for prefix in _VERSIONED:
        if template.startswith(prefix + "/"):
            return template[len(prefix):]
    return None


def served_by_client_worker(method: str, template: str) -> bool:
    """Whether a client worker answers ``method template`` itself."""
    if method in ("GET", "HEAD") and not template.startswith(_OWN_PREFIXES):
        return True  # /health, /ready, /.well-known/...
    if not template.startswith("/_matrix/client/"):
        return False  # media, federation, keys, admin APIs
    if method == "GET":
        return not any(part in template for part in _GET_ELSEWHERE)
    suffix = _suffix(template)
    return method == "POST" and suffix in READ_POSTS


async def _refuse(_api: Any, **_params: Any) -> tuple[int, Any]:
    raise MatrixError(404, REFUSAL, Codes.UNRECOGNIZED)


_MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/")


def forwardable(template: str) -> bool:
    """Whether a client worker may forward a route it does not serve (not media)."""
    return not template.startswith(_MEDIA_PREFIXES)


def restrict_to_reads(router: Router, forward: Any = None) -> int:
    """Turn every route a client worker does not serve into the refusal (before any
    authentication or body parsing, so the answer is the same for everyone), or, with
    ``forward`` (a route handler, forwarding.Forwarder.handle), into a forward to the
    main process where :func:`forwardable`. Returns how many routes were turned."""
    from homeserver.replication.forwarding import mark_forwarded

    turned = 0
    for route in router.routes:
        if served_by_client_worker(route.method, route.template):
            continue
        if forward is not None and forwardable(route.template):
            mark_forwarded(route, forward)
        else:
            _refuse_route(route)
        turned += 1
    return turned


def _refuse_route(route: Route) -> None:
    route.handler = _refuse
    route.auth = "none"
    route.json_body = False
    route.body_validator = None


class ReadOnlyPresence:
    """The presence handler as the REST layer of a client worker sees it: reads pass
    through; a sync's ``set_presence`` is not written here (presence is written by the
    main process only; a worker writing it would make its stream multi-writer) but
    reported to the main process (homeserver/replication/presence.py), which applies it
    as if the sync were its own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def user_syncing(self, user_id: str, device_id: str | None, set_presence: str,
                           timeout_ms: int) -> None:
        report = self._inner.report_sync
        if report is not None:
            report(user_id, device_id, set_presence, timeout_ms)

    async def bump_active(self, user_id: str, device_id: str | None) -> None:
        return None
