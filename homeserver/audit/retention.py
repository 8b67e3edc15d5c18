"""Retention: a daily job deleting audit entries older than ``audit.retention_days``.

Each batch runs in one transaction under the chain's head lock: it verifies the entries
it is about to delete (a broken chain is kept as evidence and reported), deletes them,
stores a checkpoint (seq and hash of the last one deleted) and appends an
``audit_purge`` entry naming that checkpoint. Verification then starts from the
checkpoint, and an altered checkpoint no longer matches the purge entry.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from homeserver.audit.service import check_purge_range
from homeserver.clock import Clock
from homeserver.handlers.security_events import SecurityEventRecorder, seal_event
from storage.stores.security_events import PurgeAborted, SecurityEvent

logger = logging.getLogger("parley.audit")

DAY_S = 24 * 60 * 60
BATCH = 5000


class AuditRetention:
    def __init__(self, recorder: SecurityEventRecorder, clock: Clock, retention_days: int,
                 batch: int = BATCH) -> None:
        self._recorder = recorder
        self._clock = clock
        self.retention_days = retention_days
        self._batch = batch
        self._loop: LoopingCall | None = None
        self._running: defer.Deferred[Any] | None = None

    async def purge_once(self) -> int:
        """Delete every entry older than the window; returns how many were deleted.
        Raises :class:`PurgeAborted` (after recording it) if they do not verify."""
        now = self._clock.time_msec()
        cutoff = now - self.retention_days * DAY_S * 1000
        store = self._recorder.store
        total = 0
        while True:
            def purge_event(count: int, through_seq: int, through_hash: str) -> SecurityEvent:
                return self._recorder.purge_event(count, through_seq, through_hash, cutoff)

            try:
                done = await store.purge_batch(cutoff, self._batch, now, check_purge_range,
                                               purge_event, seal_event)
            except PurgeAborted as e:
                logger.error("audit purge stopped: the chain does not verify: %s", e)
                await self._recorder.record("audit_purge", "failure", None,
                                            reason=f"chain does not verify: {e}"[:500])
                raise
            total += done
            if done < self._batch:
                break
        if total:
            self._recorder.note_head(await store.head())
            logger.info("audit purge deleted %d entries older than %d days", total,
                        self.retention_days)
        return total

    def start(self, first_run_s: float = 60.0) -> None:
        """Run daily on the clock's reactor; the first run ``first_run_s`` after start."""
        loop = LoopingCall(self._tick)
        loop.clock = self._clock._time  # noqa: SLF001 (the clock's own IReactorTime)
        self._loop = loop
        self._first = self._clock.call_later(first_run_s, self._start_loop)

    def _start_loop(self) -> None:
        if self._loop is not None and not self._loop.running:
            self._loop.start(DAY_S, now=True)

    def _tick(self) -> None:
        if self._running is not None:
            return  # the previous run is still going
        d = defer.ensureDeferred(self.purge_once())

        def done(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure) and not result.check(PurgeAborted):
                logger.error("audit purge failed: %s", result.getErrorMessage())

        d.addBoth(done)
        self._running = d if not d.called else None

    def stop(self) -> defer.Deferred[Any] | None:
        """Stop the schedule; a purge already running is returned so shutdown waits
        for it before the database closes."""
        first = getattr(self, "_first", None)
        if first is not None and first.active():
            first.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._running
