"""The Twisted resource that serves every route: parse, authenticate, validate,
call the servlet, render JSON, and put the same headers on every answer."""

from __future__ import annotations

import contextvars
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, BinaryIO
from urllib.parse import unquote

import orjson
from jsonschema import ValidationError
from twisted.internet import defer
from twisted.protocols.basic import FileSender
from twisted.web import resource, server
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from homeserver.audit import context as audit_context
from homeserver.auth.requester import Authenticator, ClientInfo, Requester
from homeserver.http.errors import Codes, InteractiveAuthRequired, MatrixError
from homeserver.http.longpoll import LongPoll
from homeserver.http.params import MAX_INT64, parse_int
from homeserver.http.router import Route, Router
from homeserver.metrics.http import HttpMetrics
from homeserver.ratelimit.dispatch import RouteLimits

logger = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "ETag, Retry-After",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
STRICT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Media (downloads, thumbnails, and the JSON answers on media paths): Synapse's sandbox
# policy, so an uploaded HTML/SVG file opened directly can run nothing.
MEDIA_PATH_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/")
MEDIA_CSP = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
             "style-src 'unsafe-inline'; media-src 'self'; object-src 'self'")
HSTS = "max-age=31536000; includeSubDomains"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def decode_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def encode_json(body: Any) -> bytes:
    """A response body as compact UTF-8 JSON. orjson writes the same bytes as the
    standard library four times faster (a large /sync is megabytes); what it refuses
    (integers past 64 bits, lone surrogates) goes through the standard library."""
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def describe_validation_error(err: ValidationError) -> MatrixError:
    """A schema failure as a Matrix error naming the field, never echoing its value."""
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required":
        missing = [p for p in err.validator_value if p not in (err.instance or {})]
        name = ".".join(filter(None, [path, missing[0] if missing else ""]))
        return MatrixError(400, f"Missing parameter: {name}", Codes.MISSING_PARAM)
    where = path or "body"
    if err.validator == "type":
        expected = err.validator_value
        return MatrixError(400, f"Invalid type for '{where}': expected {expected}", Codes.BAD_JSON)
    if err.validator == "additionalProperties":
        return MatrixError(400, f"Unexpected field in '{where}'", Codes.BAD_JSON)
    if err.validator in ("maxLength", "minLength", "pattern", "enum", "const", "format"):
        return MatrixError(400, f"Invalid value for '{where}'", Codes.INVALID_PARAM)
    if err.validator in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"):
        return MatrixError(400, f"Value out of range for '{where}'", Codes.INVALID_PARAM)
    return MatrixError(400, f"Invalid value for '{where}'", Codes.BAD_JSON)


def decode_path_param(raw: str) -> str:
    """Percent-decode one path segment; invalid UTF-8 or NUL is a 400, not a 500."""
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError as e:
        raise MatrixError(400, "Path parameter is not valid UTF-8", Codes.INVALID_PARAM) from e
    if "\x00" in value:
        raise MatrixError(400, "Path parameter contains a NUL character", Codes.INVALID_PARAM)
    return value


def _reject_nul_in_query(request: server.Request) -> None:
    for key, values in request.args.items():
        if b"\x00" in key or any(b"\x00" in v for v in values):
            raise MatrixError(400, "Query parameter contains a NUL character", Codes.INVALID_PARAM)


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
        return True
    return False


MAX_JSON_DEPTH = 100


def json_body_problem(value: Any) -> str | None:
    """Why a decoded JSON body cannot be accepted, or None.

    Strings (keys and values) with NUL or a lone surrogate cannot be stored
    (PostgreSQL refuses NUL; UTF-8 cannot encode a lone surrogate), and very deep
    nesting would exhaust recursion in validators and encoders: all are refused at
    the door instead of failing later.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _unstorable(item):
                return "JSON strings may not contain NUL characters or lone surrogates"
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(item, dict):
                for k, v in item.items():
                    if _unstorable(k):
                        return "JSON strings may not contain NUL characters or lone surrogates"
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item)
    return None


def parse_json_object(raw: bytes, not_json: str, not_object: str) -> dict[str, Any]:
    """Strict JSON object from bytes, or the Matrix error a client should see.
    Shared by HTTP bodies and WebSocket messages."""
    try:
        body = decode_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise MatrixError(400, not_json, Codes.NOT_JSON) from e
    if not isinstance(body, dict):
        raise MatrixError(400, not_object, Codes.BAD_JSON)
    problem = json_body_problem(body)
    if problem:
        raise MatrixError(400, problem, Codes.BAD_JSON)
    return body


class ApiRequest:
    """What a servlet sees of a request: parsed, authenticated, validated."""

    # One lives as long as its request, i.e. through a parked long-poll (issue 18).
    __slots__ = ("raw", "route", "path_params", "client", "requester", "origin", "body",
                 "access_token")

    def __init__(
        self,
        raw: server.Request,
        route: Route,
        path_params: dict[str, str],
        client: ClientInfo,
    ) -> None:
        self.raw = raw
        self.route = route
        self.path_params = path_params
        self.client = client
        self.requester: Requester | None = None
        # The verified origin server of a request on a ``federation`` auth route.
        self.origin: str | None = None
        self.body: Any = None
        self.access_token: str | None = None

    @property
    def method(self) -> str:
        return self.route.method

    def query(self, name: str, default: str | None = None) -> str | None:
        values = self.raw.args.get(name.encode("ascii"))
        if not values:
            return default
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError as e:
            raise MatrixError(400, f"Query parameter '{name}' is not UTF-8", Codes.INVALID_PARAM) from e

    def query_int(self, name: str, default: int | None = None, *, minimum: int = 0,
                  maximum: int = MAX_INT64) -> int | None:
        """A bounded integer (homeserver/http/params.py): out of range or not decimal
        digits is 400 M_INVALID_PARAM, never a value SQL cannot hold."""
        return parse_int(self.query(name), name, default, minimum=minimum, maximum=maximum)

    def query_bool(self, name: str, default: bool = False) -> bool:
        value = self.query(name)
        if value is None:
            return default
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise MatrixError(400, f"Query parameter '{name}' must be true or false", Codes.INVALID_PARAM)

    def require_requester(self) -> Requester:
        if self.requester is None:
            raise MatrixError(401, "Missing access token", Codes.MISSING_TOKEN)
        return self.requester


def is_media_upload_path(path: bytes) -> bool:
    """``/_matrix/media/<version>/upload[/...]``: the only paths whose body may exceed the
    JSON limit (they get the media limit instead)."""
    parts = path.split(b"?", 1)[0].split(b"/")
    return len(parts) >= 5 and parts[1] == b"_matrix" and parts[2] == b"media" and parts[4] == b"upload"


class ParleyRequest(server.Request):
    """A request that stops storing a body past the limit for its path.

    Media uploads (see :func:`is_media_upload_path`) get ``media_max_body_size``, every
    other path ``max_body_size``. The path is read from the channel's request line in
    :meth:`gotLength`, i.e. before any body byte arrives; should it be unavailable the
    larger limit applies and the dispatcher enforces the JSON one (``json_limit_pending``).
    Bodies go where Twisted puts them: memory below 100 KB, else an anonymous temp file,
    so a 50 MB upload is never held in memory.
    """

    # Our per-request attributes live in slots, not in Twisted's already large instance
    # __dict__: setting one more key there re-allocated it, ~1.4 KB per parked long-poll
    # (issue 18). Unset slots read as missing, so ``getattr(r, name, default)`` still works.
    __slots__ = ("body_too_large", "json_limit_pending", "body_limit", "_received",
                 "route_template", "parley_client_ip")

    max_body_size: int = 10 * 1024 * 1024
    media_max_body_size: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_too_large = False
        self.json_limit_pending = False
        self.body_limit = self.max_body_size
        self._received = 0

    def _choose_limit(self) -> int:
        media = self.media_max_body_size
        if media is None:
            return self.max_body_size
        path = getattr(self.channel, "_path", None)  # the request line, parsed before headers
        if not isinstance(path, bytes):
            self.json_limit_pending = True
            return max(self.max_body_size, media)
        return media if is_media_upload_path(path) else self.max_body_size

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        self.body_limit = self._choose_limit()
        if length is not None and length > self.body_limit:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.body_limit:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class StreamedBody:
    """A response body sent from an open file without reading it into memory (media
    downloads); :meth:`MatrixResource._respond` streams it and closes the file."""

    def __init__(self, file: BinaryIO, length: int, on_close: Callable[[], None] | None = None) -> None:
        self.file = file
        self.length = length
        self._on_close = on_close

    def close(self) -> None:
        self.file.close()
        if self._on_close is not None:
            self._on_close()


class MatrixResource(resource.Resource):
    """The root resource: every path goes through :meth:`render`."""

    isLeaf = True

    def __init__(self, router: Router, authenticator: Authenticator, trusted_proxies: bool = False,
                 metrics: HttpMetrics | None = None, rate_limits: RouteLimits | None = None):
        super().__init__()
        self._router = router
        # Rate limits, declared per route in homeserver/http/rate_classes.py.
        self._rate_limits = rate_limits
        self._auth = authenticator
        self._trusted_proxies = trusted_proxies
        self._metrics = metrics
        # Verifies X-Matrix for ``federation`` auth routes (federation/auth.py); set by
        # the composition root when federation is enabled.
        self.federation_auth: Any = None
        # Requests being handled (their Deferreds, and parked LongPolls), so a graceful
        # shutdown can wait for them.
        self._in_flight: set[defer.Deferred[None] | LongPoll] = set()
        self._idle_waiters: list[defer.Deferred[None]] = []
        # Connections that carried a request, so a shutdown can close them after their
        # answers are flushed (the reactor's own shutdown drops unsent bytes).
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        if request.channel is not None:
            self._channels.add(request.channel)
        d = defer.ensureDeferred(self._handle(request))
        if not d.called:
            self._in_flight.add(d)
            d.addBoth(self._request_done, d)
        return server.NOT_DONE_YET

    def _request_done(self, result: Any, d: defer.Deferred[None] | LongPoll) -> Any:
        self._in_flight.discard(d)
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)
        return result

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def close_connections(self) -> int:
        """Shutdown, once no request is in flight: close every connection that is still
        open, after what was written to it is sent. Returns how many are still open
        (call again until 0)."""
        still_open = 0
        for channel in list(self._channels):
            if _transport_open(channel.transport):
                still_open += 1
                if not channel.transport.disconnecting:
                    channel.transport.loseConnection()  # flushes, then closes
        return still_open

    def wait_idle(self) -> defer.Deferred[None]:
        """Fires once no request is being handled (at once if none is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if not self._in_flight:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def _client_info(self, request: server.Request) -> ClientInfo:
        ip = request.getClientAddress().host if request.getClientAddress() else "-"
        forwarded = getattr(request, "parley_client_ip", None)  # replication/forwarding.py
        if forwarded is not None:
            ip = forwarded
        elif self._trusted_proxies:
            fwd = request.getHeader("x-forwarded-for")
            if fwd:
                ip = fwd.split(",")[0].strip()
        ua = request.getHeader("user-agent") or ""
        return ClientInfo(ip=str(ip), user_agent=ua[:512])

    async def _handle(self, request: server.Request) -> None:
        start = time.monotonic()
        method = request.method.decode("ascii", "replace").upper()
        raw_path = request.path.decode("ascii", "replace")
        status = 500
        # Logged instead of the raw path: paths carry user ids, tokens and room ids.
        request.route_template = "(unmatched)"  # type: ignore[attr-defined]
        if self._metrics is not None:
            self._metrics.started()
        try:
            status, body, headers = await self._dispatch(request, method, raw_path)
        except InteractiveAuthRequired as uia:
            status, body, headers = 401, uia.body, {}
        except MatrixError as e:
            status, body, headers = e.code, e.to_json(), e.headers
            if status == 429 and self._metrics is not None:
                self._metrics.rejected(getattr(e, "limit_class", "other"))
        except Exception:
            logger.exception("Unhandled error serving %s %s", method,
                             request.route_template)  # type: ignore[attr-defined]
            status, body, headers = 500, {"errcode": Codes.UNKNOWN, "error": "Internal server error"}, {}
        if isinstance(body, LongPoll):
            self._park(request, body, start)
            return  # this coroutine chain ends here; the poll is answered when it fires
        self._finish(request, start, status, body, headers)

    def _finish(self, request: server.Request, start: float, status: int, body: Any,
                headers: dict[str, str]) -> None:
        """Send the answer, then count and log it (route templates only, never the raw
        path: paths carry user ids, tokens and room ids)."""
        method = request.method.decode("ascii", "replace").upper()
        template = request.route_template  # type: ignore[attr-defined]
        try:
            self._respond(request, status, body, headers, request.path.decode("ascii", "replace"))
        finally:
            if self._metrics is not None:
                self._metrics.finished(template, method, status, time.monotonic() - start)
        logger.info(
            "%s %s %d %.1fms",
            method,
            template,
            status,
            (time.monotonic() - start) * 1000,
            extra={"http_method": method, "route": template, "status": status},
        )

    def _park(self, request: server.Request, poll: LongPoll, start: float) -> None:
        """Keep only ``poll`` (already parked on the notifier) for this request, and
        drop what a parked request no longer needs (issue 18)."""
        poll.request = request
        poll.started = start
        poll.owner = self
        self._in_flight.add(poll)
        _trim_parked(request)
        if poll.fired:  # fired before it got here (nothing between allows it today)
            self.poll_fired(poll)

    def poll_fired(self, poll: LongPoll) -> None:
        """A parked poll was woken or timed out: build its answer in a new coroutine.
        An empty context: the code that notified (another request's, with its audit
        binding) is running now, and its context is not this request's."""
        contextvars.Context().run(defer.ensureDeferred, self._resume(poll))

    async def _resume(self, poll: LongPoll) -> None:
        request = poll.request
        headers: dict[str, str] = {}
        try:
            answer = await poll.resume()
            if answer is None:
                return  # parked again, still in flight
            status, body = answer
        except MatrixError as e:
            status, body, headers = e.code, e.to_json(), e.headers
        except Exception:
            logger.exception("Unhandled error serving %s %s",
                             request.method.decode("ascii", "replace"),
                             request.route_template)
            status, body = 500, {"errcode": Codes.UNKNOWN, "error": "Internal server error"}
        poll.request = poll.owner = None
        try:
            self._finish(request, poll.started, status, body, headers)
        finally:
            self._request_done(None, poll)

    async def _dispatch(
        self, request: server.Request, method: str, raw_path: str
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "OPTIONS":
            return 200, {}, {}
        route, raw_params, path_known = self._router.match(method, raw_path)
        if route is None and method == "HEAD":
            route, raw_params, path_known = self._router.match("GET", raw_path)
        if route is None:
            if path_known:
                allowed = ", ".join(self._router.allowed_methods(raw_path))
                raise MatrixError(
                    405, "Unrecognized request: method not allowed", Codes.UNRECOGNIZED,
                    headers={"Allow": allowed},
                )
            raise MatrixError(404, "Unrecognized request", Codes.UNRECOGNIZED)

        if getattr(request, "body_too_large", False) or (
            getattr(request, "json_limit_pending", False)
            and not is_media_upload_path(request.path)
            and request.content.seek(0, 2) > request.max_body_size  # type: ignore[attr-defined]
        ):
            raise MatrixError(413, "Request body too large", Codes.TOO_LARGE)

        request.route_template = route.template  # type: ignore[attr-defined]
        params = {k: decode_path_param(v) for k, v in raw_params.items()}
        _reject_nul_in_query(request)
        api = ApiRequest(request, route, params, self._client_info(request))
        audit_context.bind(api)  # audit entries recorded below know their request
        # A route forwarded to another process is limited there, once (replication).
        limits = None if route.extra.get("forwarded") else self._rate_limits
        if limits is not None:  # per-IP classes: before any token verification
            await limits.before_auth(api)

        if route.auth == "federation":
            if self.federation_auth is None:
                raise MatrixError(404, "Unrecognized request", Codes.UNRECOGNIZED)
            api.origin = await self.federation_auth.authenticate(api)
        elif route.auth != "none":
            token = self._extract_token(request)
            if token is not None:
                api.access_token = token
                api.requester = await self._auth.authenticate(token, api.client)
                if api.requester.is_guest and not route.allow_guest:
                    raise MatrixError(403, "Guest access not allowed", Codes.GUEST_ACCESS_FORBIDDEN)
            elif route.auth == "required":
                raise MatrixError(401, "Missing access token", Codes.MISSING_TOKEN)

        if route.json_body:
            api.body = self._parse_body(request)
            if route.body_validator is not None:
                errors = sorted(route.body_validator.iter_errors(api.body),
                                key=lambda e: (len(e.absolute_path), e.validator != "required"))
                if errors:
                    raise describe_validation_error(errors[0])

        if limits is None:
            status, body = await route.handler(api, **params)
            return status, body, {}
        await limits.after_auth(api)  # per-user and body-keyed classes
        try:
            status, body = await route.handler(api, **params)
        except MatrixError as e:
            limits.handler_failed(api, e)
            raise
        return status, body, {}

    @staticmethod
    def _extract_token(request: server.Request) -> str | None:
        header = request.getHeader("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise MatrixError(401, "Invalid Authorization header", Codes.MISSING_TOKEN)
            return value.strip()
        values = request.args.get(b"access_token")
        if values:
            return values[0].decode("utf-8", "replace")
        return None

    @staticmethod
    def _parse_body(request: server.Request) -> Any:
        request.content.seek(0)
        raw = request.content.read()
        if not raw.strip():
            raw = b"{}"
        return parse_json_object(raw, "Content not JSON.", "Content must be a JSON object.")

    @staticmethod
    def _respond(
        request: IRequest, status: int, body: Any, headers: dict[str, str], raw_path: str
    ) -> None:
        if getattr(request, "_disconnected", False) or request.finished:
            return
        # Twisted's table lacks some phrases (429 shows as "Unknown Status"): use the stdlib's.
        request.setResponseCode(status, _reason_phrase(status))
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if raw_path.startswith(MEDIA_PATH_PREFIXES):
            request.setHeader("Content-Security-Policy", MEDIA_CSP)
        else:
            request.setHeader("Content-Security-Policy", STRICT_CSP)
        if request.isSecure():
            request.setHeader("Strict-Transport-Security", HSTS)
        request.setHeader("Cache-Control", "no-cache, no-store, must-revalidate")
        for name, value in headers.items():
            request.setHeader(name, value)
        if isinstance(body, StreamedBody):
            _send_file(request, body)
            return
        if isinstance(body, bytes):
            payload = body
            if not request.responseHeaders.hasHeader(b"content-type"):
                request.setHeader("Content-Type", "application/octet-stream")
        else:
            payload = encode_json(body)
            request.setHeader("Content-Type", "application/json")
        request.setHeader("Content-Length", str(len(payload)))
        if request.method != b"HEAD":
            request.write(payload)
        request.finish()


def _trim_parked(request: server.Request) -> None:
    """What a parked request no longer needs: its query arguments and headers were
    read when it was dispatched (Twisted decided keep-alive from them before), its
    body is empty, its path segments are matched. ~0.8 KB per parked poll."""
    request.args = {}
    request.requestHeaders = Headers()
    request.postpath = []
    content = request.content
    if content is not None:
        content.close()
        request.content = None  # Twisted's cleanup skips a None body


def _transport_open(transport: Any) -> bool:
    """Whether a connection is still open (a TLS transport wraps the TCP one)."""
    if transport is None:
        return False
    while transport is not None:
        if getattr(transport, "disconnected", False):
            return False
        transport = getattr(transport, "transport", None)
    return True


def _send_file(request: IRequest, body: StreamedBody) -> None:
    """Stream ``body`` (headers already set) and finish; the file is closed either way."""
    if not request.responseHeaders.hasHeader(b"content-type"):
        request.setHeader("Content-Type", "application/octet-stream")
    request.setHeader("Content-Length", str(body.length))
    if request.method == b"HEAD":
        body.close()
        request.finish()
        return

    def done(result: Any) -> None:
        body.close()
        if not getattr(request, "_disconnected", False) and not request.finished:
            request.finish()

    FileSender().beginFileTransfer(body.file, request).addBoth(done)


class RootResource(resource.Resource):
    """The site root: exact paths mounted here (the WebSocket upgrade endpoint) go to
    their own resource, every other path to the MatrixResource.

    Needed because :class:`MatrixResource` is a leaf that routes every path itself,
    so twisted.web never offers another resource a request unless the root does.
    """

    def __init__(self, default: resource.Resource) -> None:
        super().__init__()
        self._default = default
        self._mounts: dict[bytes, resource.Resource] = {}
        self._prefixes: list[tuple[bytes, resource.Resource]] = []

    def mount(self, path: str, child: resource.Resource) -> None:
        self._mounts[path.encode("ascii")] = child

    def mount_prefix(self, prefix: str, child: resource.Resource) -> None:
        """Every path under ``prefix`` (ending in "/") goes to ``child``."""
        self._prefixes.append((prefix.encode("ascii"), child))

    def mounted(self, path: str) -> resource.Resource | None:
        return self._mounts.get(path.encode("ascii"))

    def getChildWithDefault(self, path: bytes, request: IRequest) -> resource.Resource:  # noqa: N802
        for prefix, child in self._prefixes:
            if request.path.startswith(prefix):
                return child
        return self._mounts.get(request.path, self._default)

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        # Reached only for a request with no path segments (e.g. "OPTIONS *").
        return self._default.render(request)


# What each ``listeners[].resources`` name serves, as Synapse splits them: the admin
# APIs ride on the client resource. /.well-known/matrix/server is on both: federation
# is where it belongs, and Synapse serves it on the client resource too. Prefixes end in
# "/" or are exact paths, so "/_matrix/clientx" belongs to nothing.
RESOURCE_PATHS: dict[str, tuple[str, ...]] = {
    "client": ("/_matrix/client/", "/_matrix/media/", "/.well-known/matrix/client",
               "/.well-known/matrix/support", "/.well-known/matrix/server",
               "/_parley/client/", "/_synapse/admin/", "/_parley/admin/",
               "/_parley/plugins/",  # plugins' own routes (plugins/module_api.py)
               "/_matrix/consent"),  # the consent pages (homeserver/rest/consent.py)
    "federation": ("/_matrix/federation/", "/_matrix/key/", "/.well-known/matrix/server"),
    "metrics": ("/metrics",),  # homeserver/metrics/registry.py MetricsResource
    # Requests forwarded by the other processes of a deployment (homeserver/replication/
    # forwarding.py): a listener for them only, on an internal address.
    "replication": ("/_parley/replication/",),
}
# Served on every listener (load balancers probe each port): liveness and readiness.
EVERY_LISTENER_PATHS = ("/health", "/ready")


def path_resources(path: bytes) -> frozenset[str]:
    """The resource names that serve ``path`` (empty: none does)."""
    text = path.decode("ascii", "replace")
    return frozenset(name for name, prefixes in RESOURCE_PATHS.items()
                     if any(text == p or (p.endswith("/") and text.startswith(p))
                            or text + "/" == p for p in prefixes))


class ListenerResource(resource.Resource):
    """The root of one listener: a request for a path none of the listener's
    ``resources`` serves is answered 404 M_UNRECOGNIZED (as an unknown path is) before
    any routing, authentication or body parsing; anything else goes to the shared root."""

    def __init__(self, root: resource.Resource, resources: Iterable[str]) -> None:
        super().__init__()
        self._root = root
        self.resources = frozenset(resources)
        unknown = self.resources - set(RESOURCE_PATHS)
        if unknown:
            raise ValueError(f"unknown listener resources {sorted(unknown)}")
        self._refuse = _Unrecognized()

    def serves(self, path: bytes) -> bool:
        if path.decode("ascii", "replace") in EVERY_LISTENER_PATHS:
            return True
        return bool(path_resources(path) & self.resources)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> resource.Resource:  # noqa: N802
        if not self.serves(request.path):
            return self._refuse
        return self._root.getChildWithDefault(path, request)

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        if not self.serves(request.path):
            return self._refuse.render(request)
        return self._root.render(request)


class _Unrecognized(resource.Resource):
    """404 M_UNRECOGNIZED with the usual headers, for paths this listener does not serve."""

    isLeaf = True

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        body = {"errcode": Codes.UNRECOGNIZED, "error": "Unrecognized request"}
        MatrixResource._respond(request, 404, body, {},  # noqa: SLF001
                                request.path.decode("ascii", "replace"))
        return server.NOT_DONE_YET


def listener_site(site: server.Site, resources: Iterable[str]) -> server.Site:
    """The Site of one listener: ``site``'s root, request class and limits, serving only
    the paths of ``resources``."""
    out = server.Site(ListenerResource(site.resource, resources), logPath=None)
    out.requestFactory = site.requestFactory
    out.displayTracebacks = False
    out.noisy = False
    out.log = lambda _request: None  # type: ignore[method-assign]
    return out


def make_site(
    root: resource.Resource, max_body_size: int, media_max_body_size: int | None = None
) -> server.Site:
    """A Site whose requests enforce the body limits; access logging is ours."""

    class _Request(ParleyRequest):
        pass

    _Request.max_body_size = max_body_size
    _Request.media_max_body_size = media_max_body_size
    site = server.Site(root, logPath=None)
    site.requestFactory = _Request
    site.displayTracebacks = False
    site.noisy = False
    site.log = lambda _request: None  # type: ignore[method-assign]
    return site


def _reason_phrase(status: int) -> bytes | None:
    """The standard reason phrase of ``status`` (None: let Twisted choose)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return None

