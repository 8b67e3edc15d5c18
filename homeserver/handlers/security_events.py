"""The audit trail's one writer: every security event becomes a hash-chained entry
(homeserver/audit/chain.py) in ``security_events``, plus a log line, and is handed to
the sinks (plugins' ``on_security_event``, metrics, detectors).

Callers pass identifiers only; details are sanitised anyway (no password, token, key or
content survives). Who made the request (IP, user agent, device, request id) comes from
``client`` or, when the caller has none (e.g. the UIA password stage), from the request
being served (homeserver/audit/context.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from homeserver.audit import context as audit_context
from homeserver.audit.chain import (
    GENESIS_HASH,
    PURGE_ACTION,
    clean_text,
    compute_id_macs,
    entry_hash,
    sanitize_details,
)
from homeserver.auth.requester import ClientInfo
from homeserver.clock import Clock
from storage.stores.security_events import SecurityEvent, SecurityEventStore

logger = logging.getLogger("parley.security")

# For admin actions recorded as ("admin_action", details={"action": ..., ...}): the
# details key naming what was acted on, in order of preference.
_TARGET_KEYS = ("user_id", "room_id", "media_id", "server_name", "event_id", "purge_id")
MAX_ID = 255


def seal_event(ev: SecurityEvent, seq: int, prev_hash: str) -> SecurityEvent:
    """``ev`` as the chain entry number ``seq`` following ``prev_hash``."""
    linked = dataclasses.replace(ev, seq=seq, prev_hash=prev_hash, entry_hash=None)
    return dataclasses.replace(linked, entry_hash=entry_hash(linked.fields()))


class SecurityEventRecorder:
    def __init__(self, store: SecurityEventStore, clock: Clock,
                 id_key: bytes | None = None) -> None:
        self._store = store
        self._clock = clock
        # The audit key (homeserver/audit/id_key.py): with it, entries are chain version 2
        # (identifiers hashed as MACs, so erasure can pseudonymise them).
        self.id_key = id_key
        self._sinks: list[Callable[[SecurityEvent], None]] = []
        # The chain head as last seen by this process (seq, hash): for the metric.
        self._head: tuple[int, str] = (0, GENESIS_HASH)

    @property
    def store(self) -> SecurityEventStore:
        return self._store

    def add_sink(self, sink: Callable[[SecurityEvent], None]) -> None:
        """Extra consumers (plugins, metrics, anomaly detectors) see every event."""
        self._sinks.append(sink)

    def chain_head(self) -> tuple[int, str]:
        """(seq, SHA-256 hex) of the newest entry this process wrote or loaded; cheap
        and synchronous, for a metric an outside system can notarise. Call
        :meth:`load_head` at start-up for the value before the first append."""
        return self._head

    async def load_head(self) -> tuple[int, str]:
        """Read the head from the database (chaining pre-audit rows first)."""
        await self._store.seal_legacy(seal_event)
        self.note_head(await self._store.head())
        return self._head

    def note_head(self, head: tuple[int, str]) -> None:
        if head[0] >= self._head[0]:
            self._head = head

    def build(
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
        target: str | None = None,
        action: str | None = None,
    ) -> SecurityEvent:
        """The unsealed entry: sanitised, with the current request's context filled in."""
        ctx = audit_context.current()
        request_id = ctx.request_id if ctx else None
        request = ctx.request if ctx else None
        if client is None and request is not None:
            client = getattr(request, "client", None)
        requester = getattr(request, "requester", None) if request is not None else None
        if requester is not None and user_id in (None, requester.user_id):
            user_id = requester.user_id
            device_id = device_id or requester.device_id
            session_id = session_id or requester.session_id
        clean = sanitize_details(details)
        if event_type == "admin_action" and details:
            action = action or (details.get("action") if isinstance(details.get("action"), str)
                                else None)
            if target is None:
                target = next((str(details[k]) for k in _TARGET_KEYS
                               if isinstance(details.get(k), str)), None)
        ev = SecurityEvent(
            ts=self._clock.time_msec(),
            event_type=clean_text(event_type, 64) or "unknown",
            outcome=clean_text(outcome, 64) or "unknown",
            user_id=clean_text(user_id, MAX_ID),
            device_id=clean_text(device_id, MAX_ID),
            session_id=clean_text(session_id, MAX_ID),
            ip=clean_text(client.ip, 64) if client else None,
            user_agent=clean_text(client.user_agent) if client else None,
            reason=clean_text(reason),
            details=clean,
            action=clean_text(action or event_type, 64),
            target=clean_text(target, MAX_ID),
            request_id=request_id,
        )
        if self.id_key is None:
            return ev
        return dataclasses.replace(ev, id_macs=compute_id_macs(self.id_key, ev.fields()))

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
        target: str | None = None,
        action: str | None = None,
    ) -> SecurityEvent:
        """Append one entry to the audit chain; returns it sealed (seq and hash set)."""
        ev = self.build(event_type, outcome, client, user_id=user_id, device_id=device_id,
                        session_id=session_id, reason=reason, details=details, target=target,
                        action=action)
        ev = await self._store.append(ev, seal_event)
        assert ev.seq is not None and ev.entry_hash is not None
        self.note_head((ev.seq, ev.entry_hash))
        logger.info(
            "security event %s %s", ev.event_type, ev.outcome,
            extra={"security_event": ev.event_type, "outcome": ev.outcome, "user_id": ev.user_id,
                   "device_id": ev.device_id, "reason": ev.reason, "ip": ev.ip,
                   "action": ev.action, "target": ev.target, "request_id": ev.request_id,
                   "audit_seq": ev.seq},
        )
        for sink in self._sinks:
            try:
                sink(ev)
            except Exception:
                logger.exception("security event sink failed")
        return ev

    async def uia_password_failure(self, user_id: str | None, reason: str) -> None:
        """The UIA ``m.login.password`` stage refused a password (missed before)."""
        await self.record("uia_password", "failure", None, user_id=user_id, reason=reason,
                          target=user_id)

    def purge_event(self, count: int, through_seq: int, through_hash: str,
                    cutoff_ts: int) -> SecurityEvent:
        """The entry a retention purge appends, corroborating its checkpoint."""
        return self.build(PURGE_ACTION, "success", None, reason="retention window",
                          details={"count": count, "through_seq": through_seq,
                                   "through_hash": through_hash, "cutoff_ts": cutoff_ts})
