"""Writes forwarded over internal HTTP (issue 18).

A process that does not serve a request itself (a ``client`` worker and any write; any
process and an event for a room another process persists) sends it unchanged to the
process that does: same method, path, query, body, the client's ``Authorization`` and
``User-Agent``, and the client's IP. The answer (status, JSON body, ``Retry-After``...)
is relayed as it came. The request is handled there exactly as if the client had sent
it there: authentication, validation and rate limits run once, in the receiving process,
keyed by the real client IP (the forwarding process checks none of them).

The receiving side is :class:`ForwardResource`, under ``FORWARD_PREFIX`` on listeners
with the ``replication`` resource only. It trusts the forwarded client IP only from a
request carrying the deployment's shared secret (``workers.<main>.replication.secret``),
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from homeserver.config.workers import ReplicationEndpoint
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import MatrixResource, path_resources

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from homeserver.http.server import ApiRequest

logger = logging.getLogger(__name__)

FORWARD_PREFIX = "/_parley/replication/v1/forward"
SECRET_HEADER = "X-Parley-Replication-Secret"
CLIENT_IP_HEADER = "X-Parley-Client-IP"
# Request headers passed on as the client sent them.
REQUEST_HEADERS = ("authorization", "content-type", "user-agent", "accept-language")
# Answer headers relayed (the receiving process's own CORS/security headers are set
# again by the forwarding process's MatrixResource).
ANSWER_HEADERS = ("content-type", "retry-after", "location", "www-authenticate",
                  "content-disposition")
FORWARD_TIMEOUT_S = 120.0  # login hashing, room creation, an upgrade: slow but bounded
MAX_IP_LENGTH = 64  # an IPv6 address with zone, at most


class Forwarder:
    """The forwarding side: a route handler sending its request to another process.

    ``target(api, params)`` names the endpoint of the process that serves the request
    (it may raise a MatrixError, e.g. for an unknown room)."""

    def __init__(self, reactor: Any, secret: str,
                 target: Callable[[ApiRequest, dict[str, str]], Any]) -> None:
        self._reactor = reactor
        self._secret = secret
        self._target = target
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 32
        self._pool.retryAutomatically = False  # a write is never sent twice
        self._agent = Agent(reactor, pool=self._pool, connectTimeout=5)
        self.forwarded = 0
        self.failures = 0

    async def handle(self, api: ApiRequest, **params: str) -> tuple[int, Any]:
        endpoint = self._target(api, params)
        if hasattr(endpoint, "__await__"):
            endpoint = await endpoint
        return await self.forward(api, endpoint)

    async def forward(self, api: ApiRequest, endpoint: ReplicationEndpoint) -> tuple[int, Any]:
        request: server.Request = api.raw
        uri = request.uri if request.uri.startswith(b"/") else request.path
        url = endpoint.base_url.encode("ascii") + FORWARD_PREFIX.encode("ascii") + uri
        headers = Headers({SECRET_HEADER: [self._secret], CLIENT_IP_HEADER: [api.client.ip]})
        for name in REQUEST_HEADERS:
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        request.content.seek(0)
        body = request.content.read()
        producer = FileBodyProducer(BytesIO(body)) if body else None
        try:
            d = self._agent.request(request.method, url, headers, producer)
            d.addTimeout(FORWARD_TIMEOUT_S, self._reactor)
            response = await d
            d = readBody(response)
            d.addTimeout(FORWARD_TIMEOUT_S, self._reactor)
            payload = await d
        except Exception as e:  # noqa: BLE001 (connection refused, timeout, reset...)
            self.failures += 1
            logger.warning("forwarding %s %s to %s:%d failed: %s", api.method,
                           api.route.template, endpoint.host, endpoint.port, type(e).__name__)
            raise MatrixError(502, "The process serving this request could not be reached; "
                              "try again", Codes.UNKNOWN) from e
        self.forwarded += 1
        for name in ANSWER_HEADERS:
            values = response.headers.getRawHeaders(name)
            if values:
                request.setHeader(name, values[0])
        if not response.headers.hasHeader(b"content-type"):
            request.setHeader("Content-Type", "application/json")
        return response.code, payload

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


def mark_forwarded(route: Any, handler: Any) -> None:
    """Make ``route`` forward: no authentication, body parsing or rate limit here (the
    receiving process does them all, once)."""
    route.handler = handler
    route.auth = "none"
    route.json_body = False
    route.body_validator = None
    route.extra["forwarded"] = True


class ForwardResource(resource.Resource):
    """The receiving side: ``FORWARD_PREFIX`` + the original path and query. With the
    right secret the request is handed to the process's MatrixResource as if the client
    had sent it here, from the forwarded client IP; without, 403."""

    isLeaf = True

    def __init__(self, matrix: MatrixResource, secret: str | None) -> None:
        super().__init__()
        self._matrix = matrix
        self._secret = secret.encode("utf-8") if secret else None
        self.refused = 0

    def _deny(self, request: server.Request, status: int, errcode: str, error: str) -> Any:
        MatrixResource._respond(request, status, {"errcode": errcode, "error": error},  # noqa: SLF001
                                {}, request.path.decode("ascii", "replace"))
        return server.NOT_DONE_YET

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        if self._secret is None:  # forwarding is not configured for this deployment
            return self._deny(request, 404, Codes.UNRECOGNIZED, "Unrecognized request")
        given = request.getHeader(SECRET_HEADER) or ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self._secret):
            self.refused += 1
            status = 401 if not given else 403
            errcode = Codes.MISSING_TOKEN if not given else Codes.FORBIDDEN
            return self._deny(request, status, errcode, "Invalid replication secret")
        prefix = FORWARD_PREFIX.encode("ascii")
        path = request.path[len(prefix):]
        # Only client-API paths are forwarded (never this endpoint again, never metrics).
        if not path.startswith(b"/") or "client" not in path_resources(path) \
                or path.startswith(prefix):
            return self._deny(request, 404, Codes.UNRECOGNIZED, "Unrecognized request")
        ip = (request.getHeader(CLIENT_IP_HEADER) or "-")[:MAX_IP_LENGTH]
        request.path = path
        request.uri = request.uri[len(prefix):] if request.uri.startswith(prefix) else path
        request.parley_client_ip = ip  # type: ignore[attr-defined] (MatrixResource reads it)
        return self._matrix.render(request)


def build_forwarder(config: Config, reactor: Any) -> Forwarder | None:
    """The forwarder of a process that sends requests elsewhere (None: forwarding is not
    configured, or this is the main process, which serves everything itself)."""
    wc = config.workers
    if wc.is_main or not wc.forwards_writes or wc.replication_secret is None:
        return None
    main = wc.endpoint(wc.main_name)
    return Forwarder(reactor, wc.replication_secret, lambda _api, _params: main)


def check_replication_listener(config: Config) -> None:
    """A process others forward to must listen with the ``replication`` resource."""
    wc = config.workers
    if wc.endpoint(wc.instance) is not None and wc.replication_secret is not None and \
            not any("replication" in li.resources for li in config.listeners):
        logger.warning("workers.%s.replication is set but no listener of this process "
                       "serves the 'replication' resource: forwarded requests will fail",
                       wc.instance)
