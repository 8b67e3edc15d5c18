"""Records authentication and session events: a structured row per event, plus a
log line. Callers pass identifiers only; never a password, token or content."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from homeserver.auth.requester import ClientInfo
from homeserver.clock import Clock
from storage.stores.security_events import SecurityEvent, SecurityEventStore

logger = logging.getLogger("parley.security")


class SecurityEventRecorder:
    def __init__(self, store: SecurityEventStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._sinks: list[Callable[[SecurityEvent], None]] = []

    def add_sink(self, sink: Callable[[SecurityEvent], None]) -> None:
        """Extra consumers (plugins, metrics, anomaly detectors) see every event."""
        self._sinks.append(sink)

    async def record(
        self,
        event_type: str,
        outcome: str,
        client: ClientInfo | None,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        session_id: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        ev = SecurityEvent(
            ts=self._clock.time_msec(),
            event_type=event_type,
            outcome=outcome,
            user_id=user_id,
            device_id=device_id,
            session_id=session_id,
            ip=client.ip if client else None,
            user_agent=client.user_agent if client else None,
            reason=reason,
            details=details,
        )
        await self._store.append(ev)
        logger.info(
            "security event %s %s", event_type, outcome,
            extra={"security_event": event_type, "outcome": outcome, "user_id": user_id,
                   "device_id": device_id, "reason": reason, "ip": ev.ip},
        )
        for sink in self._sinks:
            try:
                sink(ev)
            except Exception:
                logger.exception("security event sink failed")
