"""``GET /ready``: whether this process should get traffic.

200 when every dependency answers (the database, by a trivial query; Redis too once
the config names one: there is no ``redis`` section yet), 503 with a Matrix error
otherwise, and 503 from the moment a graceful shutdown starts, so a load balancer
stops sending requests before the process goes. ``/health`` (liveness) stays 200.

Before that, while ``parley run`` migrates the database and builds the server, its
listeners are already open (:class:`SwitchableRoot` over a :class:`StartingResource`):
``/health`` is 200, ``/ready`` 503 with ``"status": "migrating"`` (and the progress) or
``"starting"``, and every other path 503 with ``Retry-After``, instead of a port that
refuses connections with nothing said.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest, MatrixResource
from storage.migrations import MigrationProgress

logger = logging.getLogger(__name__)

#: A dependency that does not answer within this many seconds counts as down.
CHECK_TIMEOUT_S = 5.0

Check = Callable[[], Awaitable[None]]


class ReadinessCheck:
    def __init__(self, reactor: Any, checks: dict[str, Check]) -> None:
        self._reactor = reactor
        self._checks = checks
        self.draining = False
        self._failing: set[str] = set()

    def register(self, router: Router) -> None:
        router.add("GET", "/ready", self.ready, auth="none")

    async def _check(self, name: str, check: Check) -> bool:
        d = defer.ensureDeferred(check())
        d.addTimeout(CHECK_TIMEOUT_S, self._reactor)
        try:
            await d
        except Exception as e:  # noqa: BLE001 (any failure means "not ready")
            if name not in self._failing:  # once per outage, not per probe
                logger.warning("readiness: %s unavailable (%s)", name, type(e).__name__)
            self._failing.add(name)
            return False
        if name in self._failing:
            logger.info("readiness: %s available again", name)
            self._failing.discard(name)
        return True

    async def ready(self, req: ApiRequest) -> tuple[int, Any]:
        if self.draining:
            raise MatrixError(503, "Server is shutting down", Codes.UNKNOWN)
        down = [name for name, check in self._checks.items()
                if not await self._check(name, check)]
        if down:
            raise MatrixError(503, f"Not ready: {', '.join(down)} unavailable", Codes.UNKNOWN)
        return 200, {"status": "ready", "checks": dict.fromkeys(self._checks, "ok")}


# -- start-up -------------------------------------------------------------------------

#: What a client refused while the server starts is told to wait (seconds).
STARTING_RETRY_AFTER_S = 5


class StartupStatus:
    """What a starting process is doing: ``migrating`` (with the migration progress),
    then ``starting`` (building the server) until the real routes take over."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.migration: MigrationProgress | None = None

    def migration_progress(self, progress: MigrationProgress) -> None:
        """The ``progress`` callback of :func:`storage.migrations.migrate`."""
        self.migration = progress
        self.phase = "migrating" if progress.current is not None else "starting"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.phase}
        m = self.migration
        if self.phase == "migrating" and m is not None:
            out["migrations"] = {"done": m.done, "total": m.total, "current": m.current}
            if m.eta_s is not None:
                out["migrations"]["eta_s"] = round(m.eta_s)
        return out

    def message(self) -> str:
        m = self.migration
        if self.phase == "migrating" and m is not None:
            return (f"Server is starting: applying database migration {m.done + 1} of "
                    f"{m.total}")
        return "Server is starting"


class StartingResource(resource.Resource):
    """Every request while the server starts: ``/health`` 200 (the process is alive),
    ``/ready`` 503 saying what it is doing, anything else 503 with ``Retry-After``."""

    isLeaf = True

    def __init__(self, status: StartupStatus) -> None:
        super().__init__()
        self.status = status

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        path = request.path.decode("ascii", "replace")
        if path == "/health":
            request.setHeader("Content-Type", "text/plain; charset=utf-8")
            MatrixResource._respond(request, 200, b"OK", {}, path)  # noqa: SLF001
            return server.NOT_DONE_YET
        body: dict[str, Any] = {"errcode": Codes.UNKNOWN, "error": self.status.message()}
        if path == "/ready":
            body.update(self.status.describe())
        MatrixResource._respond(  # noqa: SLF001
            request, 503, body, {"Retry-After": str(STARTING_RETRY_AFTER_S)}, path)
        return server.NOT_DONE_YET


class SwitchableRoot(resource.Resource):
    """A site root that can be swapped while listening: the :class:`StartingResource`
    until the server is built, then the server's own root."""

    def __init__(self, target: resource.Resource) -> None:
        super().__init__()
        self.target = target

    def switch(self, target: resource.Resource) -> None:
        self.target = target

    def getChildWithDefault(self, path: bytes, request: IRequest) -> resource.Resource:  # noqa: N802
        if self.target.isLeaf:
            return self.target
        return self.target.getChildWithDefault(path, request)

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        return self.target.render(request)
