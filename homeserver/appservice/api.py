"""The HTTP client for calls to application services (``/_matrix/app/v1/...``).

URLs come from the operator's registration files, so they are trusted (no SSRF
blocklist), but every call still has one overall deadline (connect to last byte), a
bound on the answer's size, no redirects, and the ``hs_token`` in the
``Authorization`` header. Nothing here logs a token or a body.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

from homeserver.appservice.config import ApplicationService

logger = logging.getLogger(__name__)

PREFIX = "/_matrix/app/v1"
DEFAULT_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 1024 * 1024


class AppserviceError(Exception):
    """The call failed (unreachable, timeout, non-2xx, answer too large or not JSON)."""

    def __init__(self, msg: str, code: int | None = None) -> None:
        super().__init__(msg)
        self.code = code


class AppserviceApi:
    def __init__(self, reactor: Any, timeout: float = DEFAULT_TIMEOUT_S,
                 max_response: int = MAX_RESPONSE_BYTES) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._max = max_response
        # Not persistent: a kept-alive connection the service closed meanwhile would fail
        # a PUT (never retried), costing a backoff for nothing.
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, pool=self._pool, connectTimeout=timeout)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def request(self, svc: ApplicationService, method: str, path: str,
                      body: Any = None, params: dict[str, str] | None = None) -> Any:
        """Call ``svc``; the decoded JSON answer. Raises :class:`AppserviceError`."""
        if svc.url is None:
            raise AppserviceError("the service has no url")
        d = defer.ensureDeferred(self._request(svc, method, svc.url + PREFIX + path,
                                               body, params))
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except AppserviceError:
            raise
        except Exception as e:  # noqa: BLE001 (refused, DNS, timeout, TLS)
            raise AppserviceError(type(e).__name__) from e

    async def _request(self, svc: ApplicationService, method: str, url: str, body: Any,
                       params: dict[str, str] | None) -> Any:
        headers = {"Authorization": [f"Bearer {svc.hs_token}"], "User-Agent": ["Parley"]}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = ["application/json"]
        resp = await treq.request(method, url, data=data, params=params, headers=headers,
                                  agent=self._agent)
        chunks: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > self._max:
                raise AppserviceError("answer too large")
            chunks.append(chunk)

        await treq.collect(resp, collect)
        if not 200 <= resp.code < 300:
            raise AppserviceError(f"answered {resp.code}", resp.code)
        raw = b"".join(chunks)
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise AppserviceError("answer is not JSON", resp.code) from e

    # -- the calls ------------------------------------------------------------------

    async def push_transaction(self, svc: ApplicationService, txn_id: int,
                               events: list[dict[str, Any]],
                               ephemeral: list[dict[str, Any]],
                               extra: dict[str, Any] | None = None) -> None:
        """``extra``: to-device messages, device lists and key counts (encryption.py)."""
        body: dict[str, Any] = {"events": events, **(extra or {})}
        if ephemeral:
            body["ephemeral"] = ephemeral
            body["de.sorunome.msc2409.ephemeral"] = ephemeral
        await self.request(svc, "PUT", f"/transactions/{txn_id}", body)

    async def query_user(self, svc: ApplicationService, user_id: str) -> bool:
        """Whether the service says it has (now) created ``user_id``."""
        try:
            await self.request(svc, "GET", f"/users/{quote(user_id, safe='')}")
            return True
        except AppserviceError as e:
            if e.code != 404:
                logger.info("appservice %s: user query failed: %s", svc.id, e)
            return False

    async def query_alias(self, svc: ApplicationService, alias: str) -> bool:
        """Whether the service says it has (now) created the alias."""
        try:
            await self.request(svc, "GET", f"/rooms/{quote(alias, safe='')}")
            return True
        except AppserviceError as e:
            if e.code != 404:
                logger.info("appservice %s: alias query failed: %s", svc.id, e)
            return False

    async def ping(self, svc: ApplicationService, txn_id: str | None) -> None:
        body = {"transaction_id": txn_id} if txn_id is not None else {}
        await self.request(svc, "POST", "/ping", body)

    async def thirdparty(self, svc: ApplicationService, path: str,
                         fields: dict[str, str] | None = None) -> Any:
        return await self.request(svc, "GET", "/thirdparty/" + path, params=fields)
