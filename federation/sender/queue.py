"""One destination's transactions: built from the persistent queue, sent one at a time.

A transaction is stored (id and exact body) and its PDUs and EDUs leave the queue in
the same database transaction, before it is sent; it is deleted when the destination
answers 2xx. So a crash at any point either resends the stored transaction with the
same id (the destination de-duplicates by id) or finds its content still queued:
nothing queued is lost, nothing acknowledged is sent again.

At most ``MAX_PDUS`` PDUs and ``MAX_EDUS`` EDUs per transaction (the spec's limits).
Typing notifications are held in memory only (they are stale within seconds) and ride
with the next new transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from federation.client import FederationDenied, FederationError, FederationHttpError
from federation.sender.backoff import (
    BackoffPolicy,
    counts_as_down,
    rate_limited_for_ms,
    retry_due_at,
)
from homeserver.clock import Clock
from storage.stores.events import EventStore
from storage.stores.federation_queue import FederationQueueStore, InFlight

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_PDUS = 50
MAX_EDUS = 100
# More PDUs than this waiting for one destination: send the latest per room only.
CATCH_UP_OVER = 500
MAX_TYPING_HELD = 1000
TYPING_STALE_MS = 30_000
SEND_PATH = "/_matrix/federation/v1/send/"


@dataclass
class QueueStatus:
    """What the sender knows of a destination in memory (admin, tests)."""

    sent: int = 0          # transactions acknowledged since start
    failures: int = 0      # failed sends since start
    dropped: int = 0       # transactions refused by the destination (4xx) and dropped
    last_error: str | None = None
    pdu_errors: dict[str, str] = field(default_factory=dict)  # last answer's rejections


class DestinationQueue:
    def __init__(self, destination: str, server_name: str, store: FederationQueueStore,
                 events: EventStore, client: Any, clock: Clock, policy: BackoffPolicy,
                 may_send: Callable[[str], Any]) -> None:
        self.destination = destination
        self._server_name = server_name
        self._store = store
        self._events = events
        self._client = client
        self._clock = clock
        self._policy = policy
        self._may_send = may_send  # async (destination) -> bool: blocked/allowed check
        self._running: defer.Deferred[None] | None = None
        self._again = False
        self._retry: IDelayedCall | None = None
        self.typing: dict[tuple[str, str], tuple[int, JsonDict]] = {}
        self.status = QueueStatus()
        self.stopped = False

    def add_typing(self, room_id: str, user_id: str, content: JsonDict) -> None:
        if len(self.typing) >= MAX_TYPING_HELD and (room_id, user_id) not in self.typing:
            return
        self.typing[(room_id, user_id)] = (self._clock.time_msec(), content)
        self.kick()

    def kick(self) -> None:
        """Send whatever is queued, unless backing off (a timer is set) or sending."""
        if self.stopped or self._retry is not None:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = defer.ensureDeferred(self._run())
        self._running.addErrback(self._failed)
        self._running.addBoth(self._finished)

    def wake(self) -> None:
        """Try now, whatever the backoff says (the destination was heard from)."""
        if self._retry is not None:
            if self._retry.active():
                self._retry.cancel()
            self._retry = None
        self.kick()

    @property
    def busy(self) -> bool:
        return self._running is not None

    def _failed(self, f: Any) -> None:
        if not f.check(defer.CancelledError):
            logger.error("federation sender to %s failed: %s", self.destination,
                         f.getErrorMessage())

    def _finished(self, _: Any) -> None:
        self._running = None
        if self._again and self._retry is None and not self.stopped:
            self._again = False
            self.kick()

    async def _run(self) -> None:
        while not self.stopped:
            self._again = False
            if not await self._may_send(self.destination):
                await self._store.drop_queue(self.destination)
                self.typing.clear()
                return
            state = await self._store.get_destination(self.destination)
            now = self._clock.time_msec()
            if state is not None:
                due = retry_due_at(state.retry_last_ts, state.retry_interval)
                if due > now:
                    self.typing.clear()  # stale long before the destination is back
                    self._schedule(due - now)
                    return
            pending = await self._store.in_flight(self.destination)
            if pending is None:
                pending = await self._new_txn()
                if pending is None:
                    return
            if not await self._send(pending, state):
                return

    async def _new_txn(self) -> InFlight | None:
        pdus, edus = await self._store.peek(self.destination, MAX_PDUS, MAX_EDUS,
                                            CATCH_UP_OVER)
        now = self._clock.time_msec()
        room = MAX_EDUS - len(edus)
        typing = [(k, c) for k, (ts, c) in self.typing.items() if now - ts < TYPING_STALE_MS]
        typing = typing[:room]
        for k, _ in typing:
            self.typing.pop(k, None)
        self.typing = {k: v for k, v in self.typing.items() if now - v[0] < TYPING_STALE_MS}
        if not pdus and not edus and not typing:
            return None
        found = await self._events.get_events(p.event_id for p in pdus)
        pdu_json = [_federation_pdu(found[p.event_id].pdu) for p in pdus if p.event_id in found]
        body: JsonDict = {
            "origin": self._server_name,
            "origin_server_ts": now,
            "pdus": pdu_json,
            "edus": [{"edu_type": e.edu_type, "content": e.content} for e in edus]
            + [{"edu_type": "m.typing", "content": c} for _, c in typing],
        }
        return await self._store.create_txn(self.destination, body, pdus, edus, now)

    async def _send(self, pending: InFlight, state: Any) -> bool:
        """True when the transaction is done with (acknowledged or dropped)."""
        path = SEND_PATH + quote(pending.txn_id, safe="")
        try:
            answer = await self._client.put_json(self.destination, path, pending.body)
        except FederationDenied as e:
            logger.info("not sending to %s: %s", self.destination, e)
            await self._store.drop_queue(self.destination)
            return False
        except FederationHttpError as e:
            self.status.failures += 1
            self.status.last_error = f"HTTP {e.code}"
            pause = rate_limited_for_ms(e.code, e.body)
            if pause is not None:
                # Up but throttling us (our own per-origin limit answers this way): try
                # again when told, without the 10-minute "down" backoff.
                logger.info("federation: %s rate-limited us; retrying in %d ms",
                            self.destination, pause)
                self._schedule(pause)
                return False
            if counts_as_down(e.code):
                await self._back_off(state, f"HTTP {e.code}")
                return False
            # The destination refuses this transaction: it never will accept it.
            logger.warning("%s refused transaction %s with %d %s; dropping it",
                           self.destination, pending.txn_id, e.code, e.errcode)
            self.status.dropped += 1
            await self._store.complete_txn(pending, self._clock.time_msec())
            return True
        except FederationError as e:
            self.status.failures += 1
            self.status.last_error = str(e)
            await self._back_off(state, str(e))
            return False
        self._note_pdu_errors(answer)
        await self._store.complete_txn(pending, self._clock.time_msec())
        self.status.sent += 1
        return True

    def _note_pdu_errors(self, answer: Any) -> None:
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        errors: dict[str, str] = {}
        if isinstance(pdus, dict):
            for event_id, result in list(pdus.items())[:MAX_PDUS]:
                if isinstance(result, dict) and "error" in result:
                    errors[str(event_id)] = str(result["error"])[:200]
        if errors:
            logger.info("%s did not accept %d PDU(s)", self.destination, len(errors))
        self.status.pdu_errors = errors

    async def _back_off(self, state: Any, why: str) -> None:
        now = self._clock.time_msec()
        current = state.retry_interval if state is not None else 0
        failure_ts = state.failure_ts if state is not None and state.failure_ts else now
        interval = self._policy.next_interval(current)
        await self._store.set_retry(self.destination, failure_ts, now, interval)
        logger.warning("federation: %s unreachable (%s); retrying in %d s", self.destination,
                       why, interval // 1000)
        self._schedule(interval)

    def _schedule(self, delay_ms: int) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

        def retry() -> None:
            self._retry = None
            self.kick()
        self._retry = self._clock.call_later(delay_ms / 1000, retry)

    async def stop(self) -> None:
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        running = self._running
        if running is not None:
            # Cancelled mid-send: the transaction stays stored and is resent with the
            # same id on the next start.
            running.cancel()
            try:
                await running
            except Exception:  # noqa: BLE001 (already logged or cancelled)
                pass


def _federation_pdu(pdu: JsonDict) -> JsonDict:
    """The PDU as sent: our ``unsigned`` bookkeeping (prev_content...) stays home."""
    return {k: v for k, v in pdu.items() if k != "unsigned"}
