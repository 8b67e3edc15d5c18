"""``GET /ready``: whether this process should get traffic.

200 when every dependency answers (the database, by a trivial query; Redis too once
the config names one: there is no ``redis`` section yet), 503 with a Matrix error
otherwise, and 503 from the moment a graceful shutdown starts, so a load balancer
stops sending requests before the process goes. ``/health`` (liveness) stays 200.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest

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
