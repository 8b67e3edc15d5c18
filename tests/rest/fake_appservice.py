"""A fake application service for tests: a twisted.web server on a loopback port that
records every request and answers from per-path handlers (default ``{}``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer, reactor
from twisted.web import resource, server


@dataclass
class Received:
    method: str
    path: str  # percent-decoded
    args: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


Handler = Callable[[Received], "Awaitable[tuple[int, Any]] | tuple[int, Any]"]


class FakeAppservice(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted API)

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Received] = []
        self.handlers: dict[str, Handler] = {}  # path prefix -> handler
        self.transaction_status = 200
        self._waiters: list[tuple[Callable[[Received], bool], defer.Deferred[Received]]] = []
        self.port: Any = None

    def start(self) -> str:
        self.port = reactor.listenTCP(0, server.Site(self), interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()

    @property
    def transactions(self) -> list[Received]:
        return [r for r in self.requests if "/transactions/" in r.path]

    def events_of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for t in self.transactions for e in (t.body or {}).get("events", [])
                if e.get("type") == event_type]

    def wait_for(self, match: Callable[[Received], bool], timeout: float = 10
                 ) -> defer.Deferred[Received]:
        for r in self.requests:
            if match(r):
                return defer.succeed(r)
        d: defer.Deferred[Received] = defer.Deferred()
        d.addTimeout(timeout, reactor)
        self._waiters.append((match, d))
        return d

    def wait_for_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10
                       ) -> defer.Deferred[Received]:
        return self.wait_for(lambda r: "/transactions/" in r.path and any(
            pred(e) for e in (r.body or {}).get("events", [])), timeout)

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        raw = request.content.read() if request.content else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Received(
            method=request.method.decode(), path=unquote(request.path.decode()),
            args={k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
            headers={k.decode().lower(): v[0].decode()
                     for k, v in request.requestHeaders.getAllRawHeaders()},
            body=body)
        d = defer.ensureDeferred(self._answer(rec))

        def done(result: tuple[int, Any]) -> None:
            code, answer = result
            self.requests.append(rec)
            request.setResponseCode(code)
            request.setHeader("Content-Type", "application/json")
            request.write(json.dumps(answer).encode())
            request.finish()
            for match, waiter in list(self._waiters):
                if not waiter.called and match(rec):
                    self._waiters.remove((match, waiter))
                    waiter.callback(rec)

        d.addCallback(done)
        return server.NOT_DONE_YET

    async def _answer(self, rec: Received) -> tuple[int, Any]:
        for prefix, handler in self.handlers.items():
            if rec.path.startswith(prefix):
                result = handler(rec)
                if isinstance(result, tuple):
                    return result
                return await result
        if "/transactions/" in rec.path:
            return self.transaction_status, {}
        return 404, {"errcode": "M_NOT_FOUND"}
