"""URL previews (``preview_url``), off by default because fetching URLs on a client's
behalf is an SSRF risk.

When enabled, every address a URL's host resolves to (and every redirect hop, since
the check sits in the resolver the HTTP agent uses) must be public: private,
loopback, link-local, multicast, reserved, CGNAT and unique-local ranges are refused
unless listed in ``media.url_preview.ip_range_allowlist``. Bodies are capped in size
and time.

An HTML page's OpenGraph ``og:image`` (resolved against the page's final URL) is
fetched through the same guarded agent and stored as local media owned by the
requester, so clients get an ``mxc://`` URI and never fetch the third-party URL
themselves; its type and size come from decoding its header with Pillow, never from
the remote server's word. An image that cannot be fetched, decoded or stored (quota,
content-type policy, scanner) is left out of the preview rather than failing it. A
URL that is itself an image is previewed the same way. Previews are cached in memory
per URL for an hour (as Synapse), so repeated requests neither refetch nor store the
image again.
"""

from __future__ import annotations

import io
import ipaddress
import logging
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import treq
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, BrowserLikeRedirectAgent, HTTPConnectionPool
from zope.interface import implementer, provider

from homeserver.config.model import UrlPreviewConfig
from homeserver.http.errors import Codes, MatrixError
from homeserver.lru import LruCache

if TYPE_CHECKING:
    from homeserver.media.handler import MediaHandler

CACHE_SECONDS = 3600.0
MAX_CACHED = 1000
MAX_URL_LENGTH = 2048

logger = logging.getLogger(__name__)

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


def image_info(data: bytes) -> tuple[str, int, int] | None:
    """(content type, width, height) from the image's header, or None if Pillow cannot
    identify it. Only the header is read: nothing is decoded (no decompression bomb)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            mime = Image.MIME.get(img.format or "")
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    if not mime or not mime.startswith("image/"):
        return None
    return mime, int(width), int(height)


class UrlPreviewer:
    def __init__(self, config: UrlPreviewConfig, reactor: Any,
                 media: MediaHandler | None = None) -> None:
        self._config = config
        proxy = _ReactorProxy(reactor, BlocklistingResolver(reactor.nameResolver,
                                                            config.ip_range_allowlist))
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = BrowserLikeRedirectAgent(Agent(proxy, pool=self._pool, connectTimeout=5),
                                               redirectLimit=5)
        self._reactor = reactor
        self._media = media
        # url -> (expires at, preview): one fetch (and one stored image) per URL per hour.
        self._cache: LruCache[str, tuple[float, dict[str, Any]]] = LruCache(MAX_CACHED)

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if len(url) > MAX_URL_LENGTH:
            raise MatrixError(400, "URL too long", Codes.INVALID_PARAM)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MatrixError(400, "Only http and https URLs can be previewed", Codes.INVALID_PARAM)
        try:
            ipaddress.ip_address(parts.hostname)
        except ValueError:
            return
        if is_address_blocked(parts.hostname, self._config.ip_range_allowlist):
            raise MatrixError(403, "IP address blocked", Codes.FORBIDDEN)

    async def preview(self, url: str, owner: str | None = None) -> dict[str, Any]:
        """The OpenGraph data of ``url``; an image found is stored as media of ``owner``."""
        self.check_url(url)
        now = self._reactor.seconds()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            return dict(cached[1])
        body, ctype, final_url = await self._fetch(url)
        og: dict[str, Any]
        if "html" in ctype:
            og = parse_og(body)
            image_url = og.pop("og:image", None)
            for key in ("og:image:width", "og:image:height", "og:image:type",
                        "og:image:secure_url", "og:image:url"):
                og.pop(key, None)  # only what we fetched and measured is reported
            if isinstance(image_url, str) and image_url.strip() and owner is not None:
                og.update(await self._image_from_url(urljoin(final_url, image_url.strip()),
                                                     owner))
        elif ctype.startswith("image/"):
            og = await self._stored_image(body, owner) if owner is not None else {}
            if not og:
                og = {"matrix:image:size": len(body)}
        else:
            og = {}
        self._cache.set(url, (now + CACHE_SECONDS, og))
        return dict(og)

    async def _image_from_url(self, url: str, owner: str) -> dict[str, Any]:
        try:
            self.check_url(url)
            body, _, _ = await self._fetch(url)
        except MatrixError:
            return {}
        return await self._stored_image(body, owner)

    async def _stored_image(self, body: bytes, owner: str | None) -> dict[str, Any]:
        """Measure the image and store it as media: the og:image fields, or {}."""
        if self._media is None or owner is None or not body:
            return {}
        info = await deferToThread(image_info, body)
        if info is None:
            return {}
        mime, width, height = info
        try:
            mxc = await self._media.upload(owner, io.BytesIO(body), mime, len(body))
        except MatrixError as e:
            logger.info("preview image not stored: %s", e.msg)
            return {}
        return {"og:image": mxc, "og:image:type": mime, "og:image:width": width,
                "og:image:height": height, "matrix:image:size": len(body)}

    async def _fetch(self, url: str) -> tuple[bytes, str, str]:
        """(body, content type lowercased, final URL after redirects) of a 200 answer,
        within the size and time limits; 502 otherwise."""
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
            resp.deliverBody(_Discard())
            raise MatrixError(502, f"The URL answered {resp.code}", Codes.UNKNOWN)
        length = resp.length
        if isinstance(length, int) and length > cap:
            resp.deliverBody(_Discard())
            raise MatrixError(502, "The URL's content is too large", Codes.UNKNOWN)
        ctype = (resp.headers.getRawHeaders("content-type") or [""])[0].lower()
        try:
            d = treq.collect(resp, collect)
            timer = self._reactor.callLater(self._config.timeout, d.cancel)
            await d
            if timer.active():
                timer.cancel()
        except Exception as e:  # noqa: BLE001
            raise MatrixError(502, "Could not fetch the URL", Codes.UNKNOWN) from e
        final = url
        request = getattr(resp, "request", None)
        absolute = getattr(request, "absoluteURI", None)
        if isinstance(absolute, bytes):
            final = absolute.decode("ascii", "replace")
        return b"".join(chunks), ctype, final


class _Discard(Protocol):
    """Reads and drops a body we do not want, so the connection is released."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass
