"""The homeserver → application service transaction queue.

Events a service is interested in are queued in the database when they are persisted
(:meth:`AppserviceHandler.event_persisted`). Per service, one sender at a time turns
the queue into a transaction (stored with its id and event ids before it is sent),
PUTs it to ``/_matrix/app/v1/transactions/{txnId}`` and, on a 2xx, deletes it and
records its id as acknowledged. A failure keeps the transaction and retries it with the
same id and events after an exponential backoff (1 s doubling to 512 s), so after a
restart the transaction in flight arrives once more with the same id (the service
de-duplicates by id) and nothing acknowledged is sent again.

Ephemeral events (typing, receipts, presence, for services with ``receive_ephemeral``)
are kept in memory only, bounded, and ride along with the next transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from homeserver.appservice.api import AppserviceApi, AppserviceError
from homeserver.appservice.config import ApplicationService
from homeserver.appservice.encryption import KeyCounts, PendingCrypto
from homeserver.clock import Clock
from homeserver.events.client_format import serialize_event
from storage.stores.appservice import AppserviceStore, PendingTxn
from storage.stores.events import EventStore

logger = logging.getLogger(__name__)

# Called with a service and the events of a transaction about to be sent to it (the
# handler asks the service about unknown users those events name).
BeforeSend = Callable[[ApplicationService, list[dict[str, Any]]], Awaitable[None]]

MAX_EVENTS_PER_TXN = 100
MAX_EPHEMERAL_QUEUED = 1000
MAX_EPHEMERAL_PER_TXN = 100
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 512.0
STOP_GRACE_S = 5.0


async def _wait(d: defer.Deferred[None], timeout: float) -> None:
    """Wait for ``d`` at most ``timeout`` seconds of real time, then cancel it."""
    from twisted.internet import reactor

    waiter: defer.Deferred[None] = defer.Deferred()
    d.addBoth(lambda r: waiter.callback(None) if not waiter.called else None)
    call = reactor.callLater(timeout, d.cancel)  # type: ignore[attr-defined]
    try:
        await waiter
    finally:
        if call.active():
            call.cancel()


class ServiceQueue:
    """Sends one service's transactions, one at a time."""

    def __init__(self, svc: ApplicationService, store: AppserviceStore, events: EventStore,
                 api: AppserviceApi, clock: Clock) -> None:
        self.svc = svc
        self._store = store
        self._events = events
        self._api = api
        self._clock = clock
        self._running: defer.Deferred[None] | None = None
        self._again = False
        self._retry: IDelayedCall | None = None
        self.backoff = 0.0
        self.ephemeral: list[dict[str, Any]] = []
        self.sent = 0  # transactions acknowledged since start (tests, metrics)
        self.stopped = False
        self.before_send: BeforeSend | None = None
        # To-device messages, device list changes, key counts (encryption.py).
        self.crypto = PendingCrypto()
        self.key_counts: KeyCounts | None = None

    def add_ephemeral(self, edu: dict[str, Any]) -> None:
        if len(self.ephemeral) >= MAX_EPHEMERAL_QUEUED:
            self.ephemeral.pop(0)
        self.ephemeral.append(edu)
        self.kick()

    def kick(self) -> None:
        """Send whatever is queued, now, unless backing off or already sending."""
        if self.stopped or self.svc.url is None or self._retry is not None:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = defer.ensureDeferred(self._run())
        self._running.addErrback(self._failed)
        self._running.addBoth(self._finished)

    def _failed(self, f: Any) -> None:
        if not f.check(defer.CancelledError):  # cancelled: stopping, resent on start
            logger.error("appservice %s: sender failed: %s", self.svc.id, f.getErrorMessage())

    def _finished(self, _: Any) -> None:
        self._running = None
        if self._again and self._retry is None:
            self._again = False
            self.kick()

    async def _run(self) -> None:
        while not self.stopped:
            self._again = False
            pending = await self._store.next_txn(self.svc.id, MAX_EVENTS_PER_TXN)
            ephemeral = self.ephemeral[:MAX_EPHEMERAL_PER_TXN]
            crypto = bool(self.crypto)
            if pending is None and not ephemeral and not crypto:
                return
            if pending is None:
                pending = PendingTxn(self.svc.id, await self._store.new_empty_txn(self.svc.id),
                                     [], 0)
            events = await self._render(pending)
            if self.before_send is not None and events:
                await self.before_send(self.svc, events)
            extra: dict[str, Any] = {}
            carried = None
            if crypto:
                extra, carried = await self.crypto.take(self.key_counts)
            try:
                await self._api.push_transaction(self.svc, pending.txn_id, events, ephemeral,
                                                 extra)
            except AppserviceError as e:
                self._schedule_retry(str(e))
                return
            del self.ephemeral[:len(ephemeral)]
            if carried is not None:
                carried()
            if pending.event_ids:
                await self._store.complete_txn(pending)
            self.sent += 1
            self.backoff = 0.0

    async def _render(self, pending: PendingTxn) -> list[dict[str, Any]]:
        found = await self._events.get_events(pending.event_ids)
        now = self._clock.time_msec()
        return [serialize_event(found[eid], now) for eid in pending.event_ids if eid in found]

    def _schedule_retry(self, why: str) -> None:
        self.backoff = min(BACKOFF_MAX_S, self.backoff * 2 if self.backoff else BACKOFF_START_S)
        logger.warning("appservice %s: transaction not delivered (%s); retrying in %.0f s",
                       self.svc.id, why, self.backoff)

        def retry() -> None:
            self._retry = None
            self.kick()
        self._retry = self._clock.call_later(self.backoff, retry)

    async def stop(self) -> None:
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        running = self._running
        if running is not None:
            # Let a transaction being sent finish (and its acknowledgement be recorded)
            # for a few seconds; past that it is cancelled, stays stored, and is sent
            # again with the same id on the next start.
            await _wait(running, STOP_GRACE_S)


class AppserviceScheduler:
    """One :class:`ServiceQueue` per registered service."""

    def __init__(self, services: list[ApplicationService], store: AppserviceStore,
                 events: EventStore, api: AppserviceApi, clock: Clock) -> None:
        self.queues = {s.id: ServiceQueue(s, store, events, api, clock) for s in services}
        self._api = api

    def start(self) -> None:
        """Resume: send what was queued or in flight when the server last stopped."""
        for queue in self.queues.values():
            queue.kick()

    def set_before_send(self, before_send: BeforeSend) -> None:
        for queue in self.queues.values():
            queue.before_send = before_send

    def set_key_counts(self, key_counts: KeyCounts) -> None:
        for queue in self.queues.values():
            queue.key_counts = key_counts

    def kick(self, as_id: str) -> None:
        self.queues[as_id].kick()

    def add_ephemeral(self, as_id: str, edu: dict[str, Any]) -> None:
        self.queues[as_id].add_ephemeral(edu)

    async def stop(self) -> None:
        for queue in self.queues.values():
            await queue.stop()
        await self._api.close()

