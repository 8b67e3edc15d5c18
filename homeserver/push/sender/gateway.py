"""The HTTP client for push gateways, guarded against SSRF.

A pusher's URL comes from a client, so every address its host resolves to goes
through the IP blocklist of URL previews (homeserver/media/preview.py): private,
loopback, link-local, CGNAT and other non-public ranges are refused, for IP literals
before connecting and for names in the resolver (so a name that later resolves to a
private address is refused too). Hosts listed in ``push.gateway_allowlist`` skip the
blocklist (an operator's gateway on a private network, tests). Redirects are not
followed. One overall deadline covers connecting, sending and reading, and at most
``push.max_response_size`` bytes of the answer are read.

Nothing here logs the URL's query, the pushkey or the body.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import treq
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

from homeserver.http.bounded_body import read_bounded
from homeserver.media.preview import BlocklistingResolver, _ReactorProxy, is_address_blocked
from homeserver.push.sender.config import PushConfig

JsonDict = dict[str, Any]


class GatewayError(Exception):
    """The notification was not delivered; the pusher retries later."""


class GatewayBlocked(GatewayError):
    """The gateway's address is on the blocklist."""


class GatewayClient:
    def __init__(self, reactor: Any, config: PushConfig) -> None:
        self._reactor = reactor
        self._config = config
        self._allow = frozenset(config.gateway_allowlist)
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        guarded = _ReactorProxy(reactor, BlocklistingResolver(reactor.nameResolver, []))
        self._guarded = Agent(guarded, pool=self._pool, connectTimeout=config.timeout)
        self._trusted = Agent(reactor, pool=self._pool, connectTimeout=config.timeout)

    def _agent_for(self, url: str) -> Agent:
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError as e:
            raise GatewayError("not a valid URL") from e
        if parts.scheme not in ("http", "https") or not host:
            raise GatewayError("not an http(s) URL")
        if host in self._allow:
            return self._trusted
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return self._guarded  # a name: its addresses are checked as it resolves
        if is_address_blocked(host, []):
            raise GatewayBlocked("gateway address blocked")
        return self._guarded

    async def post(self, url: str, body: JsonDict) -> JsonDict:
        """POST ``body``; the gateway's JSON answer ({} if it sent none). Raises
        :class:`GatewayError` on any failure (blocked, unreachable, timeout, non-2xx,
        answer too large)."""
        agent = self._agent_for(url)
        d = defer.ensureDeferred(self._post(agent, url, body))
        d.addTimeout(self._config.timeout, self._reactor)
        try:
            return await d
        except GatewayError:
            raise
        except Exception as e:  # noqa: BLE001 (DNS, refused, blocked by resolver, timeout)
            raise GatewayError(type(e).__name__) from e

    async def _post(self, agent: Agent, url: str, body: JsonDict) -> JsonDict:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        resp = await treq.post(url, data=data, agent=agent, headers={
            "Content-Type": ["application/json"], "User-Agent": ["Parley push"]})
        raw = await read_bounded(resp, self._config.max_response_size,
                                 lambda: GatewayError("answer too large"))
        if not 200 <= resp.code < 300:
            raise GatewayError(f"gateway answered {resp.code}")
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            return {}  # a 2xx without JSON: delivered, nothing rejected
        return answer if isinstance(answer, dict) else {}

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
