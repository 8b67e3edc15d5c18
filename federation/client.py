"""The outbound HTTP client for federation: discovery, X-Matrix signing, TLS, limits.

Every request goes to a server found by federation/discovery.py and carries the
``Host`` header and certificate name discovery chose. TLS is always verified, against
the system's CAs or, with ``federation.tls_ca_file``, against that file's CAs only
(a private federation). There is no option to turn verification off; only tests may
speak plain HTTP (``plain_http_for_tests``, not in the config schema). Every address
a name resolves to goes through the SSRF guard of URL previews and push gateways
(homeserver/media/preview.py): private, loopback, link-local and other non-public
addresses are refused unless in ``federation.ip_range_allowlist``. One deadline
covers connecting, sending and reading; answers are read up to
``federation.max_response_size`` bytes. With federation disabled, or a destination
outside ``federation.allowed_servers``, nothing is sent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urljoin

import treq
from signedjson.types import SigningKey
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from federation.discovery import WELL_KNOWN_MAX_SIZE, ServerDiscovery, ServerTarget
from federation.x_matrix import is_valid_server_name, sign_request
from homeserver.config.federation import FederationConfig
from homeserver.http.bounded_body import read_bounded
from homeserver.media.preview import BlocklistingResolver, _ReactorProxy

logger = logging.getLogger(__name__)

WELL_KNOWN_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
USER_AGENT = b"Parley federation"


class FederationError(Exception):
    """A federation request failed (not sent, unreachable, timed out, too large, or
    the remote server answered with an error)."""


class FederationDenied(FederationError):
    """Federation is disabled, or the destination is not allowed: nothing was sent."""


class FederationHttpError(FederationError):
    """The remote server answered with a non-2xx status."""

    def __init__(self, code: int, body: Any) -> None:
        super().__init__(f"remote server answered {code}")
        self.code = code
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) else None


class _TooLarge(FederationError):
    pass


AnswerTooLarge = _TooLarge  # public name: the answer exceeded the size cap


@dataclass(frozen=True)
class RawAnswer:
    """A non-JSON answer (``request(..., raw=True)``, e.g. media): any status, the
    response headers (lower-case names, first values) and the size-capped body."""

    code: int
    headers: dict[str, str]
    body: bytes


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def load_trust_root(path: str) -> Any:
    """Every PEM certificate in ``path`` as the only trusted CAs."""
    with open(path, "rb") as fh:
        data = fh.read()
    marker = b"-----END CERTIFICATE-----"
    certs = [ssl.Certificate.loadPEM(chunk + marker) for chunk in data.split(marker)
             if b"-----BEGIN CERTIFICATE-----" in chunk]
    if not certs:
        raise ValueError(f"{path}: no PEM certificate found")
    return ssl.trustRootFromCertificates(certs)


@implementer(IStreamClientEndpoint)
class _TargetEndpoint:
    """Connects to the first reachable address of a :class:`ServerTarget`, through the
    guarded resolver, with TLS verified for the target's certificate name."""

    def __init__(self, reactor: Any, target: ServerTarget, trust_root: Any, plain: bool,
                 timeout: float) -> None:
        self._reactor = reactor
        self._target = target
        self._trust_root = trust_root
        self._plain = plain
        self._timeout = timeout

    async def _connect(self, factory: Any) -> Any:
        last: Exception | None = None
        for host, port in self._target.addresses:
            ep: Any = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
            if not self._plain:
                options = ssl.optionsForClientTLS(self._target.tls_name, self._trust_root)
                ep = wrapClientTLS(options, ep)
            try:
                return await ep.connect(factory)
            except Exception as e:  # noqa: BLE001 (try the next address)
                last = e
        raise last or FederationError("no address to connect to")

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:  # noqa: N803
        return defer.ensureDeferred(self._connect(protocolFactory))


@implementer(IAgentEndpointFactory)
class _OneTarget:
    def __init__(self, endpoint: _TargetEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> _TargetEndpoint:  # noqa: N802
        return self._endpoint


class FederationClient:
    """Signed JSON requests to other homeservers."""

    def __init__(self, config: FederationConfig, server_name: str, signing_key: SigningKey,
                 reactor: Any, clock: Any, srv_resolver: Any = None,
                 discovery: ServerDiscovery | None = None) -> None:
        self._config = config
        self._server_name = server_name
        self._signing_key = signing_key
        self._reactor = reactor
        self._guarded = _ReactorProxy(reactor, BlocklistingResolver(
            reactor.nameResolver, list(config.ip_range_allowlist)))
        self._trust_root = (load_trust_root(config.tls_ca_file) if config.tls_ca_file
                            else ssl.platformTrust())
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        if srv_resolver is None:
            from twisted.names import client as dns_client

            srv_resolver = dns_client.createResolver()
        self.discovery = discovery or ServerDiscovery(clock, srv_resolver,
                                                      self.fetch_well_known)
        self._web_agent = Agent(self._guarded, contextFactory=BrowserLikePolicyForHTTPS(
            self._trust_root), pool=self._pool, connectTimeout=WELL_KNOWN_TIMEOUT_S)

    def check_destination(self, destination: str) -> None:
        """:class:`FederationDenied` unless we may send to ``destination``."""
        if not self._config.enabled:
            raise FederationDenied("federation is disabled")
        if not is_valid_server_name(destination):
            raise FederationDenied("invalid server name")
        if destination == self._server_name:
            raise FederationDenied("refusing to send a federation request to ourselves")
        if not self._config.server_allowed(destination):
            raise FederationDenied("destination not in federation.allowed_servers")

    async def get_json(self, destination: str, path: str, args: dict[str, Any] | None = None,
                       *, signed: bool = True, timeout: float | None = None,
                       max_size: int | None = None) -> Any:
        return await self.request(destination, "GET", path, args=args, signed=signed,
                                  timeout=timeout, max_size=max_size)

    async def post_json(self, destination: str, path: str, body: Any,
                        args: dict[str, Any] | None = None, *, signed: bool = True,
                        timeout: float | None = None, max_size: int | None = None) -> Any:
        return await self.request(destination, "POST", path, args=args, body=body,
                                  signed=signed, timeout=timeout, max_size=max_size)

    async def put_json(self, destination: str, path: str, body: Any,
                       args: dict[str, Any] | None = None, *, timeout: float | None = None,
                       max_size: int | None = None) -> Any:
        return await self.request(destination, "PUT", path, args=args, body=body,
                                  timeout=timeout, max_size=max_size)

    async def request(self, destination: str, method: str, path: str, *,
                      args: dict[str, Any] | None = None, body: Any = None,
                      signed: bool = True, timeout: float | None = None,
                      max_size: int | None = None, raw: bool = False) -> Any:
        """Send one request and return the decoded JSON answer (with ``raw``, a
        :class:`RawAnswer` whatever the status). ``path`` is already percent-encoded
        (``quote`` path parameters); ``args`` values are str or lists."""
        self.check_destination(destination)
        timeout = timeout or self._config.request_timeout
        cap = min(max_size or self._config.max_response_size, self._config.max_response_size)
        uri = path + ("?" + urlencode(args, doseq=True) if args else "")
        d = defer.ensureDeferred(self._request(destination, method.upper(), uri, body,
                                               signed, timeout, cap, raw))
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout, expire)
        try:
            return await d
        except Exception as e:  # noqa: BLE001 (DNS, refused, TLS, blocked address)
            if timed_out:
                raise FederationError("request timed out") from e
            if isinstance(e, FederationError):
                raise
            raise FederationError(f"request failed: {type(e).__name__}") from e
        finally:
            if timer.active():
                timer.cancel()

    async def _request(self, destination: str, method: str, uri: str, body: Any,
                       signed: bool, timeout: float, cap: int, raw_answer: bool = False) -> Any:
        target = await self.discovery.resolve(destination)
        headers: dict[bytes, list[bytes]] = {
            b"Host": [target.host_header.encode("ascii")], b"User-Agent": [USER_AGENT]}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers[b"Content-Type"] = [b"application/json"]
        if signed:
            headers[b"Authorization"] = [sign_request(
                self._signing_key, self._server_name, destination, method, uri,
                body).encode("utf-8")]
        endpoint = _TargetEndpoint(self._guarded, target, self._trust_root,
                                   self._config.plain_http_for_tests, timeout)
        agent = Agent.usingEndpointFactory(self._reactor, _OneTarget(endpoint), pool=self._pool)
        url = f"matrix-federation://{quote(destination, safe='[]:')}{uri}"
        resp = await treq.request(method, url, headers=headers, data=data, agent=agent)
        raw = await read_bounded(resp, cap, lambda: _TooLarge("answer too large"))
        if raw_answer:
            return RawAnswer(resp.code, {
                k.decode("latin-1").lower(): v[0].decode("latin-1")
                for k, v in resp.headers.getAllRawHeaders() if v}, raw)
        try:
            answer = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant) \
                if raw else None
        except (ValueError, UnicodeDecodeError):
            answer = None
            if 200 <= resp.code < 300:
                raise FederationError("answer is not JSON") from None
        if not 200 <= resp.code < 300:
            raise FederationHttpError(resp.code, answer)
        return answer

    async def get_url(self, url: str, max_size: int, timeout: float) -> RawAnswer:
        """GET an absolute https URL another server pointed us to (a media ``Location``):
        unsigned, guarded, TLS-verified, no redirects followed, size- and time-bounded."""
        if not self._config.enabled:
            raise FederationDenied("federation is disabled")
        if not url.startswith("https://") and not self._config.plain_http_for_tests:
            raise FederationError("refusing a non-https URL")

        async def get() -> RawAnswer:
            resp = await treq.get(url, agent=self._web_agent,
                                  headers={b"User-Agent": [USER_AGENT]})
            body = await read_bounded(resp, max_size, lambda: _TooLarge("answer too large"))
            return RawAnswer(resp.code, {
                k.decode("latin-1").lower(): v[0].decode("latin-1")
                for k, v in resp.headers.getAllRawHeaders() if v}, body)

        d = defer.ensureDeferred(get())
        d.addTimeout(timeout, self._reactor)
        try:
            return await d
        except FederationError:
            raise
        except Exception as e:  # noqa: BLE001 (refused, TLS, blocked address, timeout)
            raise FederationError(f"request failed: {type(e).__name__}") from e

    async def fetch_well_known(self, url: str) -> tuple[int, str | None, bytes]:
        """GET ``url`` for discovery: guarded, TLS-verified, redirects followed (at most
        5, https only), body capped at 50 KiB, 10 s overall."""
        d = defer.ensureDeferred(self._fetch_well_known(url))
        d.addTimeout(WELL_KNOWN_TIMEOUT_S, self._reactor)
        return await d

    async def _fetch_well_known(self, url: str) -> tuple[int, str | None, bytes]:
        for _ in range(MAX_REDIRECTS + 1):
            if not url.startswith("https://") and not self._config.plain_http_for_tests:
                raise FederationError("well-known redirect to a non-https URL")
            resp = await treq.get(url, agent=self._web_agent,
                                  headers={b"User-Agent": [USER_AGENT]})
            location = resp.headers.getRawHeaders(b"location")
            if resp.code in (301, 302, 303, 307, 308) and location:
                await read_bounded(resp, WELL_KNOWN_MAX_SIZE, lambda: _TooLarge("too large"))
                url = urljoin(url, location[0].decode("ascii", "replace"))
                continue
            raw = await read_bounded(resp, WELL_KNOWN_MAX_SIZE, lambda: _TooLarge("too large"))
            cc = resp.headers.getRawHeaders(b"cache-control")
            return resp.code, cc[0].decode("ascii", "replace") if cc else None, raw
        raise FederationError("too many redirects")

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
