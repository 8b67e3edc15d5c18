"""WebSocket push at ``/_parley/client/v1/ws``: /sync batches pushed as they happen.

autobahn's Twisted ``WebSocketServerProtocol`` behind twisted.web (``WebSocketResource``,
mounted by :class:`homeserver.http.server.RootResource`). The wire protocol (JSON text
frames) is documented in README.md, "WebSocket sync". In short::

    client -> {"type": "auth", "access_token": "..."}        (unless sent as a Bearer header)
    client -> {"type": "subscribe", "since": "s1_2", "filter": {...} | "<filter id>", "full_state": false}
    server -> {"type": "sync", "batch": <the /sync response>}
    client -> {"type": "ack", "next_batch": "s3_2"}
    server -> {"type": "error", "errcode": "M_BAD_JSON", "error": "..."}

Security: the token comes from the ``Authorization`` header or the first message, never
the URL (URLs end up in logs); a failed authentication closes with 4401 before any data
is sent; the session is re-checked before every push, every 30 s, and at once when it is
revoked in this process. Nothing here logs tokens or message content, and autobahn's own
debug logging (which would print the handshake's headers) is silenced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from jsonschema import Draft202012Validator
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from homeserver.auth.requester import Authenticator, ClientInfo, Requester
from homeserver.auth.session_cache import SessionCache
from homeserver.clock import Clock
from homeserver.handlers.filters import FilterHandler
from homeserver.handlers.sync import SyncHandler, SyncToken
from homeserver.handlers.sync_filter import SyncFilter
from homeserver.handlers.sync_push import MAX_IN_FLIGHT, POLL_TIMEOUT_MS, SyncPushStream
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import describe_validation_error, encode_json, parse_json_object
from homeserver.ratelimit.limiter import RateLimiter
from homeserver.rest.client.sync import parse_inline_filter, resolve_filter

logger = logging.getLogger(__name__)

WS_PATH = "/_parley/client/v1/ws"

CLOSE_NORMAL = 1000
CLOSE_BAD_REQUEST = 4400  # too many malformed messages
CLOSE_UNAUTHORIZED = 4401  # no, bad, expired or revoked token
CLOSE_TOO_MANY = 4429  # messages arriving faster than they are handled
CLOSE_INTERNAL = 4500
CLOSE_SHUTDOWN = 4503  # server stopping: reconnect and resubscribe

MAX_MESSAGE_BYTES = 64 * 1024
AUTH_TIMEOUT_S = 10.0
REAUTH_INTERVAL_S = 30.0
MAX_ERRORS = 5
MAX_PENDING_MESSAGES = 32
# Messages refused by the per-IP ``api`` rate limit before the connection is closed 4429.
MAX_RATE_LIMITED = 5
AUTO_PING_INTERVAL_S = 30.0
AUTO_PING_TIMEOUT_S = 20.0

_AUTH_SCHEMA = {
    "type": "object", "required": ["type", "access_token"],
    "properties": {"type": {"const": "auth"},
                   "access_token": {"type": "string", "minLength": 1, "maxLength": 8192}},
}
_SUBSCRIBE_SCHEMA = {
    "type": "object", "required": ["type"],
    "properties": {
        "type": {"const": "subscribe"},
        "since": {"type": ["string", "null"], "maxLength": 512},
        "filter": {"type": ["object", "string", "null"], "maxLength": 512},
        "full_state": {"type": "boolean"},
    },
}
_ACK_SCHEMA = {
    "type": "object", "required": ["type", "next_batch"],
    "properties": {"type": {"const": "ack"},
                   "next_batch": {"type": "string", "minLength": 1, "maxLength": 512}},
}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in
               (("auth", _AUTH_SCHEMA), ("subscribe", _SUBSCRIBE_SCHEMA), ("ack", _ACK_SCHEMA))}


class _QuietLog:
    """Stands in for autobahn's logger. Its debug output includes the raw handshake
    (the Authorization header) and frame payloads, so debug/trace are dropped and the
    rest keeps only its format string, never the substituted values. Its warnings are
    about misbehaving clients (protocol violations, dropped peers): info for us."""

    def __getattr__(self, level: str) -> Callable[..., None]:
        if level in ("info", "warn", "error", "critical", "failure"):
            def emit(fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
                logger.info("autobahn: %s", fmt or level)
            return emit
        return lambda *args, **kwargs: None


def _json_error(err: MatrixError) -> dict[str, Any]:
    return {"type": "error", **err.to_json()}


class SyncWebSocketProtocol(WebSocketServerProtocol):
    """One client connection: authentication state, one subscription, its message queue."""

    log = _QuietLog()
    factory: SyncWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self._client = ClientInfo(ip="-", user_agent="")
        self._header_token: str | None = None
        self._reject_reason: str | None = None
        self._token: str | None = None
        self.requester: Requester | None = None
        self._closing = False
        self._errors = 0
        self._rate_limited = 0
        self._refused: MatrixError | None = None  # the 429 of a refused upgrade
        self._pending = 0
        self._chain: defer.Deferred[None] = defer.succeed(None)
        self._auth_timer: IDelayedCall | None = None
        self._check_timer: IDelayedCall | None = None
        self._stream: SyncPushStream | None = None
        self._stream_run: defer.Deferred[None] | None = None
        self._resume_from: SyncToken | None = None
        self._opened_at = time.monotonic()

    # -- autobahn callbacks -------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> defer.Deferred[None]:  # noqa: N802 (autobahn API)
        """The per-IP ``api`` rate limit (HTTP 429 instead of the upgrade), then note the
        token from the upgrade request; authentication runs once open, so that every
        failure is reported the same way (close 4401)."""
        self._client = self.factory.client_info(request)
        return defer.ensureDeferred(self._admit(request))

    async def _admit(self, request: ConnectionRequest) -> None:
        try:
            await self.factory.check_rate(self._client)
        except MatrixError as e:
            self._refused = e
            raise ConnectionDeny(e.code, "Too Many Requests") from e
        if "access_token" in request.params:
            self._reject_reason = "Access tokens are not accepted in the URL"
            return
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                self._reject_reason = "Invalid Authorization header"
            else:
                self._header_token = value.strip()

    def onOpen(self) -> None:  # noqa: N802
        self._opened_at = time.monotonic()
        self.factory.opened(self)
        if self._reject_reason:
            self._close(CLOSE_UNAUTHORIZED, self._reject_reason)
        elif self._header_token is not None:
            token, self._header_token = self._header_token, None
            self._enqueue(lambda: self._authenticate(token))
        else:
            self._auth_timer = self.factory.clock.call_later(AUTH_TIMEOUT_S, self._auth_timeout)

    def failHandshake(self, reason: str, code: int = 400,  # noqa: N802 (autobahn API)
                      responseHeaders: Any = None) -> None:  # noqa: N803
        """A rate-limited upgrade is answered like any 429: ``Retry-After`` and the
        Matrix error body with ``retry_after_ms``."""
        err, self._refused = self._refused, None
        if err is None or code != err.code:
            super().failHandshake(reason, code, responseHeaders)
            return
        self.wasNotCleanReason = reason
        body = encode_json(err.to_json())
        head = [f"HTTP/1.1 {err.code} {reason}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close",
                *(f"{k}: {v}" for k, v in err.headers.items())]
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        self.dropConnection(abort=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if self._closing:
            return
        self._enqueue(lambda: self._on_message(payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        if not self._closing:
            self._closing = True
            self._teardown()
        if self.factory.closed(self):
            logger.info("websocket closed code=%s after %.0fs", code,
                        time.monotonic() - self._opened_at)

    # -- message handling ----------------------------------------------------------

    def _enqueue(self, task: Callable[[], Awaitable[None]], counted: bool = True) -> None:
        """Handle messages one at a time, in order (an auth message must finish before
        the subscribe behind it is looked at)."""
        if counted:
            if self._pending >= MAX_PENDING_MESSAGES:
                self._close(CLOSE_TOO_MANY, "Too many unprocessed messages")
                return
            self._pending += 1

        def run(_: Any) -> Any:
            if self._closing:
                return None
            return defer.ensureDeferred(task())  # type: ignore[arg-type]

        def done(result: Any) -> None:
            if counted:
                self._pending -= 1
            if isinstance(result, Failure):
                self._internal_error(result)

        self._chain.addCallback(run).addBoth(done)

    async def _on_message(self, payload: bytes, is_binary: bool) -> None:
        if not await self._message_admitted():
            return
        if self.requester is None:
            token = self._auth_message_token(payload, is_binary)
            if token is None:
                self._close(CLOSE_UNAUTHORIZED, "Authentication required: send an auth message first")
                return
            await self._authenticate(token)
            return
        try:
            msg = self._parse(payload, is_binary)
            kind = msg["type"]
            if kind == "ack":
                self._on_ack(msg["next_batch"])
            elif kind == "subscribe":
                await self._on_subscribe(msg)
            else:
                await self._authenticate(msg["access_token"])
        except MatrixError as e:
            self._error(e)

    async def _message_admitted(self) -> bool:
        """Each message counts as one request against the per-IP ``api`` limit. A refused
        one is dropped with an ``M_LIMIT_EXCEEDED`` error frame (``retry_after_ms``); a
        client that keeps going past the limit is closed with 4429."""
        try:
            await self.factory.check_rate(self._client)
        except MatrixError as e:
            if self._closing:
                return False
            self._rate_limited += 1
            if self._rate_limited >= MAX_RATE_LIMITED:
                self._close(CLOSE_TOO_MANY, "Rate limit exceeded")
            else:
                self._send_json(_json_error(e))
            return False
        return not self._closing

    @staticmethod
    def _parse(payload: bytes, is_binary: bool) -> dict[str, Any]:
        if is_binary:
            raise MatrixError(400, "Messages must be JSON text frames", Codes.BAD_JSON)
        msg = parse_json_object(payload, "Message is not valid JSON",
                                "Message must be a JSON object")
        kind = msg.get("type")
        validator = _VALIDATORS.get(kind) if isinstance(kind, str) else None
        if validator is None:
            raise MatrixError(400, "Unknown message type", Codes.BAD_JSON)
        errors = sorted(validator.iter_errors(msg),
                        key=lambda e: (len(e.absolute_path), e.validator != "required"))
        if errors:
            raise describe_validation_error(errors[0])
        return msg

    def _auth_message_token(self, payload: bytes, is_binary: bool) -> str | None:
        try:
            msg = self._parse(payload, is_binary)
        except MatrixError:
            return None
        return msg["access_token"] if msg["type"] == "auth" else None

    def _error(self, err: MatrixError) -> None:
        """Tell the client what was wrong; a client that keeps sending garbage is cut off."""
        self._errors += 1
        self._send_json(_json_error(err))
        if self._errors >= MAX_ERRORS:
            self._close(CLOSE_BAD_REQUEST, "Too many malformed messages")

    def _on_ack(self, next_batch: str) -> None:
        if self._stream is None or not self._stream.ack(next_batch):
            raise MatrixError(400, "next_batch was not sent on this subscription",
                              Codes.INVALID_PARAM)
        self._resume_from = self._stream.acked

    async def _on_subscribe(self, msg: dict[str, Any]) -> None:
        assert self.requester is not None
        if "since" not in msg:
            since = self._stream.acked if self._stream is not None else self._resume_from
        else:
            since = SyncToken.parse(msg["since"]) if msg["since"] is not None else None
        raw_filter = msg.get("filter")
        sync_filter: SyncFilter
        if isinstance(raw_filter, dict):
            sync_filter = parse_inline_filter(raw_filter)
        else:
            sync_filter = await resolve_filter(self.factory.filters, self.requester.user_id,
                                               raw_filter)
        if self._closing:
            return
        self._stop_stream()
        self._resume_from = since
        stream = SyncPushStream(
            self.factory.sync, self.requester.user_id, self.requester.device_id, since,
            sync_filter, bool(msg.get("full_state", False)),
            send=lambda batch: self._push(stream, batch),
            max_in_flight=self.factory.max_in_flight,
            poll_timeout_ms=self.factory.poll_timeout_ms,
        )
        self._stream = stream
        run = defer.ensureDeferred(stream.run())
        self._stream_run = run
        run.addErrback(self._stream_failed, stream)

    def _stream_failed(self, failure: Failure, stream: SyncPushStream) -> None:
        if failure.check(defer.CancelledError) or self._closing or stream is not self._stream:
            return
        if failure.check(MatrixError):
            self._error(failure.value)  # type: ignore[arg-type]
            return
        self._internal_error(failure)

    # -- authentication ------------------------------------------------------------

    async def _authenticate(self, token: str) -> None:
        """Authenticate a token, first or renewed (a refreshed access token for the same
        device keeps the connection alive past the old token's expiry)."""
        try:
            requester = await self.factory.authenticator.authenticate(token, self._client)
        except MatrixError as e:
            self._close(CLOSE_UNAUTHORIZED, e.msg)
            return
        if self._closing:
            return
        if self.requester is not None and (requester.user_id, requester.device_id) != (
                self.requester.user_id, self.requester.device_id):
            raise MatrixError(403, "The token belongs to another user or device",
                              Codes.FORBIDDEN)
        first = self.requester is None
        self._token, self.requester = token, requester
        if first:
            if self._auth_timer is not None and self._auth_timer.active():
                self._auth_timer.cancel()
            self._auth_timer = None
            self._schedule_check()

    async def _still_valid(self) -> bool:
        """Re-authenticate the current token; close with 4401 if it no longer is."""
        if self._closing or self._token is None:
            return False
        try:
            requester = await self.factory.authenticator.authenticate(self._token, self._client)
        except MatrixError as e:
            self._close(CLOSE_UNAUTHORIZED, e.msg)
            return False
        if self._closing:
            return False
        self.requester = requester
        return True

    def _schedule_check(self) -> None:
        self._check_timer = self.factory.clock.call_later(REAUTH_INTERVAL_S, self._periodic_check)

    def _periodic_check(self) -> None:
        self._check_timer = None

        async def check() -> None:
            if await self._still_valid():
                self._schedule_check()

        self._enqueue(check, counted=False)

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        if self.requester is None:
            self._close(CLOSE_UNAUTHORIZED, "Authentication timed out")

    def session_revoked(self) -> None:
        self._close(CLOSE_UNAUTHORIZED, "Access token has been revoked")

    # -- sending and closing -------------------------------------------------------

    async def _push(self, stream: SyncPushStream, batch: dict[str, Any]) -> bool:
        if stream is not self._stream or not await self._still_valid():
            return False
        if stream is not self._stream:
            return False
        self._send_json({"type": "sync", "batch": batch})
        return True

    def _send_json(self, message: dict[str, Any]) -> None:
        if not self._closing:
            self.sendMessage(encode_json(message), isBinary=False)

    def _stop_stream(self) -> None:
        run, self._stream_run, self._stream = self._stream_run, None, None
        if run is not None and not run.called:
            run.cancel()

    def _teardown(self) -> None:
        for timer in (self._auth_timer, self._check_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._auth_timer = self._check_timer = None
        self._stop_stream()

    def _close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._teardown()
        self.sendClose(code, reason)

    def _internal_error(self, failure: Failure) -> None:
        # The type only: exception messages can quote data.
        logger.error("websocket handler failed: %s", failure.type.__name__)
        self._close(CLOSE_INTERNAL, "Internal server error")

    def shutdown(self) -> None:
        self._close(CLOSE_SHUTDOWN, "Server shutting down")


class SyncWebSocketFactory(WebSocketServerFactory):
    """Builds connections and knows the open ones (to close them on revocation and
    on shutdown)."""

    protocol = SyncWebSocketProtocol
    log = _QuietLog()

    def __init__(
        self,
        clock: Clock,
        authenticator: Authenticator,
        sync: SyncHandler,
        filters: FilterHandler,
        session_cache: SessionCache | None = None,
        trusted_proxies: bool = False,
        max_in_flight: int = MAX_IN_FLIGHT,
        poll_timeout_ms: int = POLL_TIMEOUT_MS,
        rate_limiter: RateLimiter | None = None,
        on_rate_limited: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(server=None)
        # The per-IP ``api`` class that MatrixResource's dispatch point applies to every
        # other request: this endpoint does not pass through it.
        self.rate_limiter = rate_limiter
        self._on_rate_limited = on_rate_limited  # the rejection counter, by class
        self.clock = clock
        self.authenticator = authenticator
        self.sync = sync
        self.filters = filters
        self.max_in_flight = max_in_flight
        self.poll_timeout_ms = poll_timeout_ms
        self._trusted_proxies = trusted_proxies
        self._open: set[SyncWebSocketProtocol] = set()
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            autoPingInterval=AUTO_PING_INTERVAL_S,
            autoPingTimeout=AUTO_PING_TIMEOUT_S,
            openHandshakeTimeout=AUTH_TIMEOUT_S,
            closeHandshakeTimeout=5,
            failByDrop=False,  # send the close code (e.g. 1009 too big) before hanging up
            webStatus=False,  # a plain GET gets an HTTP error, not autobahn's status page
        )
        if session_cache is not None:
            session_cache.add_revocation_listener(self._sessions_revoked)

    def make_resource(self) -> WebSocketResource:
        return WebSocketResource(self)

    def client_info(self, request: ConnectionRequest) -> ClientInfo:
        """IP and user agent for device last-seen, the same way MatrixResource derives them."""
        ip = str(request.peer or "-")
        if ip.startswith(("tcp4:", "tcp6:")):
            ip = ip[5:].rsplit(":", 1)[0]
        if self._trusted_proxies:
            fwd = request.headers.get("x-forwarded-for")
            if fwd:
                ip = fwd.split(",")[0].strip()
        return ClientInfo(ip=ip, user_agent=(request.headers.get("user-agent") or "")[:512])

    async def check_rate(self, client: ClientInfo) -> None:
        """Count one request of ``client`` against the per-IP ``api`` limit (429)."""
        if self.rate_limiter is None:
            return
        try:
            await self.rate_limiter.check("api", client.ip, ip=client.ip, client=client,
                                          key_kind="ip")
        except MatrixError:
            if self._on_rate_limited is not None:
                self._on_rate_limited("api")
            raise

    def opened(self, conn: SyncWebSocketProtocol) -> None:
        self._open.add(conn)

    def closed(self, conn: SyncWebSocketProtocol) -> bool:
        if conn in self._open:
            self._open.discard(conn)
            return True
        return False

    def connection_count(self) -> int:
        return len(self._open)

    def _sessions_revoked(self, session_ids: list[str]) -> None:
        revoked = set(session_ids)
        for conn in list(self._open):
            if conn.requester is not None and conn.requester.session_id in revoked:
                conn.session_revoked()

    def close_all(self) -> None:
        """On shutdown: tell every client to reconnect elsewhere / later."""
        for conn in list(self._open):
            conn.shutdown()
