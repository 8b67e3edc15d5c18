"""Raising an alert: one audit entry (type ``alert``, severity in details, which the
recorder also hands to the plugins' ``on_security_event``), the Prometheus counter
``parley_security_alerts_total{detector,severity}``, and, where the user should know,
a server notice to that user (never another person's IP, never a secret)."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.server_notices import SECURITY_NOTICE_TYPE, ServerNoticesHandler
from homeserver.metrics.registry import PREFIX

logger = logging.getLogger("parley.security.alerts")

INFO, WARNING, HIGH = "info", "warning", "high"
ALERT_EVENT = "alert"


class Alerts:
    def __init__(self, recorder: SecurityEventRecorder, registry: CollectorRegistry | None,
                 notices: ServerNoticesHandler | None) -> None:
        self._recorder = recorder
        self._notices = notices
        self.counter = Counter(
            f"{PREFIX}security_alerts",
            "Alerts raised by the attack detectors, by detector and severity.",
            ["detector", "severity"], registry=registry)
        self._pending: set[defer.Deferred[Any]] = set()
        # One alert at a time per user, in the order raised: their records and notices
        # keep that order (two lockouts' notices used to swap when the first one's
        # audit write was the slower).
        self._user_locks: dict[str, defer.DeferredLock] = {}

    @property
    def recorder(self) -> SecurityEventRecorder:
        return self._recorder

    async def raise_alert(self, detector: str, severity: str, reason: str, *,
                          user_id: str | None = None, details: dict[str, Any] | None = None,
                          notice: str | None = None) -> None:
        """Record the alert; ``notice`` (if given) goes to ``user_id``'s notices room."""
        self.counter.labels(detector, severity).inc()
        key = user_id or ""
        lock = self._user_locks.setdefault(key, defer.DeferredLock())
        await lock.acquire()
        try:
            await self._recorder.record(
                ALERT_EVENT, "raised", None, user_id=user_id, reason=reason, target=user_id,
                action=f"alert.{detector}",
                details={"detector": detector, "severity": severity, **(details or {})})
            if notice is not None and user_id is not None and self._notices is not None \
                    and self._notices.enabled:
                await self._notices.send_notice(user_id, notice,
                                                notice_type=SECURITY_NOTICE_TYPE)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._user_locks.pop(key, None)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run alert work off the caller's path (sinks and fan-out subscribers are
        synchronous or must not wait on notices); failures are logged."""
        d: defer.Deferred[Any] = defer.ensureDeferred(coro)
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if isinstance(result, Failure):
                logger.error("alert handling failed: %s", result.getErrorMessage())

        d.addBoth(done)

    async def drain(self) -> None:
        """Wait for alert work in flight (shutdown, tests)."""
        while self._pending:
            await defer.DeferredList(list(self._pending), consumeErrors=True)
