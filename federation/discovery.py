"""Server discovery (server-server API, "Resolving server names"): where to connect
for a server name, which ``Host`` header to send and which name the TLS certificate
must carry.

In the spec's order: an IP literal (with or without port) is used as is; a name with
an explicit port is resolved with A/AAAA; otherwise ``/.well-known/matrix/server`` is
fetched and, if it delegates, the delegated name goes through the same steps (IP
literal, explicit port, SRV); without delegation, SRV ``_matrix-fed._tcp`` then the
deprecated ``_matrix._tcp``, then port 8448. Answers are cached: well-known for its
``Cache-Control`` max-age bounded to [5 min, 48 h] (24 h without one; a failed
lookup 1 h, as Synapse), SRV for the records' TTL bounded to [1 min, 24 h]. Caches
are bounded in entries; well-known bodies in size and time (the fetcher's job).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.lru import LruCache

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8448
WELL_KNOWN_MAX_SIZE = 50 * 1024
WELL_KNOWN_DEFAULT_CACHE_S = 24 * 3600.0
WELL_KNOWN_MIN_CACHE_S = 300.0
WELL_KNOWN_MAX_CACHE_S = 48 * 3600.0
WELL_KNOWN_INVALID_CACHE_S = 3600.0
SRV_MIN_CACHE_S = 60.0
SRV_MAX_CACHE_S = 24 * 3600.0
SRV_FAILURE_CACHE_S = 300.0
CACHE_ENTRIES = 10_000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d{1,10})\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ServerTarget:
    """Where to send requests for one server name."""

    host_header: str  # the Host header (the server name, or the delegated one)
    tls_name: str  # the name (or IP) the certificate must be valid for; also the SNI
    addresses: tuple[tuple[str, int], ...]  # (host or IP, port) to try in order


# fetch(url) -> (HTTP status, Cache-Control header or None, body): bounded by the caller.
WellKnownFetcher = Callable[[str], Awaitable[tuple[int, str | None, bytes]]]


def split_host_port(name: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` → (host without brackets, port)."""
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        host, rest = name[1:end], name[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after IPv6 literal")
        port = rest[1:] if rest else None
    else:
        host, sep, port_s = name.partition(":")
        port = port_s if sep else None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("invalid port")
        return host, int(port)
    return host, None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _valid_hostname(host: str) -> bool:
    return bool(host) and len(host) <= 255 and bool(re.fullmatch(r"[A-Za-z0-9.\-]+", host))


class ServerDiscovery:
    """``resolve(server_name)`` → :class:`ServerTarget`.

    ``srv_resolver`` has twisted.names' ``lookupService(name)`` (a Deferred of
    (answers, authority, additional)); ``fetch_well_known`` fetches a URL through the
    guarded, size- and time-bounded federation HTTP client.
    """

    def __init__(self, clock: Clock, srv_resolver: Any, fetch_well_known: WellKnownFetcher,
                 cache_entries: int = CACHE_ENTRIES) -> None:
        self._clock = clock
        self._srv = srv_resolver
        self._fetch = fetch_well_known
        self._well_known: LruCache[str, tuple[float, str | None]] = LruCache(cache_entries)
        self._srv_cache: LruCache[str, tuple[float, list[tuple[str, int]]]] = \
            LruCache(cache_entries)

    async def resolve(self, server_name: str) -> ServerTarget:
        host, port = split_host_port(server_name)
        if _is_ip(host):  # step 1: an IP literal
            return ServerTarget(server_name, host, ((host, port or DEFAULT_PORT),))
        if not _valid_hostname(host):
            raise ValueError("invalid server name")
        if port is not None:  # step 2: explicit port
            return ServerTarget(server_name, host, ((host, port),))
        delegated = await self.well_known(host)  # step 3
        if delegated is not None:
            try:
                d_host, d_port = split_host_port(delegated)
            except ValueError:
                d_host, d_port = "", None
            if _is_ip(d_host):
                return ServerTarget(delegated, d_host, ((d_host, d_port or DEFAULT_PORT),))
            if _valid_hostname(d_host):
                if d_port is not None:
                    return ServerTarget(delegated, d_host, ((d_host, d_port),))
                return ServerTarget(d_host, d_host, tuple(await self._srv_or_default(d_host)))
        return ServerTarget(host, host, tuple(await self._srv_or_default(host)))  # steps 4-6

    async def _srv_or_default(self, host: str) -> list[tuple[str, int]]:
        for prefix in ("_matrix-fed._tcp.", "_matrix._tcp."):
            targets = await self.srv(prefix + host)
            if targets:
                return targets
        return [(host, DEFAULT_PORT)]

    async def srv(self, name: str) -> list[tuple[str, int]]:
        """SRV targets of ``name``, by priority then weight (cached for the TTL)."""
        now = self._clock.time()
        cached = self._srv_cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answers, _auth, _add = await self._srv.lookupService(name)
        except Exception as e:  # noqa: BLE001 (NXDOMAIN, timeout, refused: no SRV)
            logger.debug("SRV lookup failed: %s", type(e).__name__)
            self._srv_cache.set(name, (now + SRV_FAILURE_CACHE_S, []))
            return []
        records = []
        ttl = SRV_MAX_CACHE_S
        for rr in answers:
            payload = getattr(rr, "payload", None)
            target = getattr(payload, "target", None)
            if target is None or getattr(payload, "port", None) is None:
                continue
            records.append((int(payload.priority), -int(payload.weight),
                            str(target).rstrip("."), int(payload.port)))
            ttl = min(ttl, float(getattr(rr, "ttl", SRV_MAX_CACHE_S) or 0))
        records.sort()
        # A single "." target means the service is decidedly not available (RFC 2782).
        out = [(t, p) for _, _, t, p in records if t and _valid_hostname(t) and 0 < p < 65536]
        self._srv_cache.set(name, (now + max(SRV_MIN_CACHE_S, ttl), out))
        return out

    async def well_known(self, host: str) -> str | None:
        """The ``m.server`` of ``https://host/.well-known/matrix/server`` (None if absent
        or invalid); cached."""
        now = self._clock.time()
        cached = self._well_known.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        result, cache_s = await self._fetch_well_known(host)
        self._well_known.set(host, (now + cache_s, result))
        return result

    async def _fetch_well_known(self, host: str) -> tuple[str | None, float]:
        try:
            status, cache_control, body = await self._fetch(
                f"https://{host}/.well-known/matrix/server")
        except Exception as e:  # noqa: BLE001 (unreachable, TLS, too large, timeout)
            logger.debug("well-known lookup failed: %s", type(e).__name__)
            return None, WELL_KNOWN_INVALID_CACHE_S
        if status != 200 or len(body) > WELL_KNOWN_MAX_SIZE:
            return None, WELL_KNOWN_INVALID_CACHE_S
        try:
            parsed = json.loads(body)
        except ValueError:
            return None, WELL_KNOWN_INVALID_CACHE_S
        server = parsed.get("m.server") if isinstance(parsed, dict) else None
        if not isinstance(server, str) or not server or len(server) > 255:
            return None, WELL_KNOWN_INVALID_CACHE_S
        try:
            split_host_port(server)
        except ValueError:
            return None, WELL_KNOWN_INVALID_CACHE_S
        cache_s = WELL_KNOWN_DEFAULT_CACHE_S
        m = _MAX_AGE.search(cache_control or "")
        if m:
            cache_s = min(max(float(m.group(1)), WELL_KNOWN_MIN_CACHE_S), WELL_KNOWN_MAX_CACHE_S)
        if cache_control and "no-store" in cache_control.lower():
            cache_s = WELL_KNOWN_MIN_CACHE_S
        return server, cache_s
