"""URL previews (``preview_url``), off by default because fetching URLs on a client's
behalf is an SSRF risk.

When enabled, every address a URL's host resolves to (and every redirect hop, since
the check sits in the resolver the HTTP agent uses) must be public: private,
loopback, link-local, multicast, reserved, CGNAT and unique-local ranges are refused
unless listed in ``media.url_preview.ip_range_allowlist``. Bodies are capped in size
and time.
"""

from __future__ import annotations

import ipaddress
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import treq
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.web.client import Agent, BrowserLikeRedirectAgent, HTTPConnectionPool
from zope.interface import implementer, provider

from homeserver.config.model import UrlPreviewConfig
from homeserver.http.errors import Codes, MatrixError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_EXTRA_BLOCKED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "fc00::/7", "64:ff9b::/96",
)]


def is_address_blocked(ip: str, allowlist: list[str]) -> bool:
    """True if ``ip`` is not a public unicast address (and not allow-listed)."""
    try:
        addr: IPAddress = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in ipaddress.ip_network(n, strict=False) for n in allowlist):
        return False
    return (
        addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
        or addr.is_reserved or addr.is_unspecified or not addr.is_global
        or any(addr in n for n in _EXTRA_BLOCKED if n.version == addr.version)
    )


@implementer(IHostnameResolver)
class BlocklistingResolver:
    """Wraps a resolver, dropping blocked addresses; if all are blocked the connection
    fails as if the name did not resolve."""

    def __init__(self, inner: Any, allowlist: list[str]) -> None:
        self._inner = inner
        self._allowlist = allowlist

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,  # noqa: N802, N803
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:  # noqa: N803
        allowlist = self._allowlist

        @provider(IResolutionReceiver)
        class _Filter:
            @staticmethod
            def resolutionBegan(resolution: Any) -> None:  # noqa: N802
                receiver.resolutionBegan(resolution)

            @staticmethod
            def addressResolved(address: Any) -> None:  # noqa: N802
                if not is_address_blocked(address.host, allowlist):
                    receiver.addressResolved(address)

            @staticmethod
            def resolutionComplete() -> None:  # noqa: N802
                receiver.resolutionComplete()

        return self._inner.resolveHostName(_Filter, hostName, portNumber, addressTypes,
                                           transportSemantics)


class _ReactorProxy:
    """The reactor, but with the blocklisting resolver."""

    def __init__(self, reactor: Any, resolver: BlocklistingResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class _OgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.og: dict[str, str] = {}
        self._in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "meta":
            prop = a.get("property") or a.get("name") or ""
            if prop.startswith("og:") and a.get("content") and prop not in self.og:
                self.og[prop] = (a.get("content") or "")[:1000]
            elif prop == "description" and a.get("content"):
                self.og.setdefault("og:description", (a.get("content") or "")[:1000])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and len(self.title) < 1000:
            self.title += data


def parse_og(html: bytes) -> dict[str, Any]:
    parser = _OgParser()
    parser.feed(html.decode("utf-8", "replace"))
    og: dict[str, Any] = dict(parser.og)
    if "og:title" not in og and parser.title.strip():
        og["og:title"] = parser.title.strip()
    return og


class UrlPreviewer:
    def __init__(self, config: UrlPreviewConfig, reactor: Any) -> None:
        self._config = config
        proxy = _ReactorProxy(reactor, BlocklistingResolver(reactor.nameResolver,
                                                            config.ip_range_allowlist))
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = BrowserLikeRedirectAgent(Agent(proxy, pool=self._pool, connectTimeout=5),
                                               redirectLimit=5)
        self._reactor = reactor

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MatrixError(400, "Only http and https URLs can be previewed", Codes.INVALID_PARAM)
        try:
            ipaddress.ip_address(parts.hostname)
        except ValueError:
            return
        if is_address_blocked(parts.hostname, self._config.ip_range_allowlist):
            raise MatrixError(403, "IP address blocked", Codes.FORBIDDEN)

    async def preview(self, url: str) -> dict[str, Any]:
        self.check_url(url)
        cap = self._config.max_size
        try:
            resp = await treq.get(url, agent=self._agent, timeout=self._config.timeout,
                                  headers={"User-Agent": ["Parley URL preview"]})
        except Exception as e:  # noqa: BLE001 (DNS failure, blocked address, timeout...)
            raise MatrixError(502, "Could not fetch the URL", Codes.UNKNOWN) from e
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > cap:
                raise ValueError("too large")
            chunks.append(data)

        if resp.code != 200:
            raise MatrixError(502, f"The URL answered {resp.code}", Codes.UNKNOWN)
        ctype = (resp.headers.getRawHeaders("content-type") or [""])[0].lower()
        try:
            d = treq.collect(resp, collect)
            timer = self._reactor.callLater(self._config.timeout, d.cancel)
            await d
            if timer.active():
                timer.cancel()
        except Exception as e:  # noqa: BLE001
            raise MatrixError(502, "Could not fetch the URL", Codes.UNKNOWN) from e
        body = b"".join(chunks)
        if "html" not in ctype:
            return {"matrix:image:size": size} if ctype.startswith("image/") else {}
        return parse_og(body)
