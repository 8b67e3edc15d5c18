"""Inbound X-Matrix authentication: the router's ``federation`` auth mode.

A request on a route declared with ``auth="federation"`` must carry an X-Matrix
``Authorization`` header (federation/x_matrix.py) whose signature, by a key of the
origin valid now (federation/keyring.py), covers the method, the URI as received,
the origin, our server name as destination, and the JSON body if there is one. Any
failure is 401 ``M_UNAUTHORIZED`` and a ``federation_auth`` security event (reason
and origin, never the header or the body); an origin outside
``federation.allowed_servers`` is 403 ``M_FORBIDDEN``. Several headers (the spec lets
a request carry one per key) are tried in order; the first that verifies wins.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from federation.keyring import KeyRing
from federation.x_matrix import XMatrixAuth, XMatrixError, parse_x_matrix, verify_request
from homeserver.config.federation import FederationConfig
from homeserver.events.signing import SignatureError
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import parse_json_object

logger = logging.getLogger(__name__)

MAX_AUTH_HEADERS = 4


class FederationAuthenticator:
    def __init__(self, server_name: str, keyring: KeyRing, config: FederationConfig,
                 events: SecurityEventRecorder, clock: Any) -> None:
        self._server_name = server_name
        self._keyring = keyring
        self._config = config
        self._events = events
        self._clock = clock

    async def authenticate(self, api: Any) -> str:
        """The verified origin of ``api`` (an ApiRequest), or a MatrixError."""
        raw = api.raw
        headers = raw.requestHeaders.getRawHeaders(b"authorization") or []
        parsed: list[XMatrixAuth] = []
        for header in headers[:MAX_AUTH_HEADERS]:
            try:
                parsed.append(parse_x_matrix(header.decode("utf-8")))
            except (XMatrixError, UnicodeDecodeError):
                continue
        if not parsed:
            await self._fail(api, None, "missing or malformed X-Matrix header")
        origins = {p.origin for p in parsed}
        if len(origins) != 1:
            await self._fail(api, None, "X-Matrix headers name different origins")
        origin = parsed[0].origin
        if origin == self._server_name:
            await self._fail(api, origin, "request claims to come from this server")
        if not self._config.server_allowed(origin):
            await self._events.record("federation_auth", "denied", api.client,
                                      reason="origin not in federation.allowed_servers",
                                      target=origin)
            raise MatrixError(403, "Federation denied with this server", Codes.FORBIDDEN)
        content = self._content(raw)
        uri = raw.uri.decode("ascii", "replace")
        now = self._clock.time_msec()
        reason = "no valid signature"
        for auth in parsed:
            if auth.destination is not None and auth.destination != self._server_name:
                reason = "request is for another destination"
                continue
            try:
                key = await self._keyring.get_verify_key(origin, auth.key, now)
            except ValueError:
                key = None
            if key is None:
                reason = "unknown or expired key"
                continue
            try:
                verify_request(auth, key, self._server_name, raw.method.decode("ascii"),
                               uri, content)
            except SignatureError:
                reason = "bad signature"
                continue
            return origin
        await self._fail(api, origin, reason)

    @staticmethod
    def _content(raw: Any) -> Any:
        raw.content.seek(0)
        body = raw.content.read()
        raw.content.seek(0)
        if not body.strip():
            return None
        return parse_json_object(body, "Content not JSON.", "Content must be a JSON object.")

    async def _fail(self, api: Any, origin: str | None, reason: str) -> NoReturn:
        await self._events.record("federation_auth", "failure", api.client, reason=reason,
                                  target=origin)
        raise MatrixError(401, "Invalid or missing X-Matrix signature", Codes.UNAUTHORIZED)
