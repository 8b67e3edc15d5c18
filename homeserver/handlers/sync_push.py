"""The push loop behind the WebSocket sync channel, independent of the transport.

A subscription long-polls :meth:`SyncHandler.sync` from its cursor and hands every
batch with something in it to the transport, batch after batch, exactly the JSON of
/sync. Delivery is at-least-once: the client acknowledges ``next_batch`` tokens, the
server keeps at most ``max_in_flight`` batches unacknowledged (backpressure), and a
client that reconnects resubscribes from its last acknowledged token, so whatever
was sent but not acknowledged is sent again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from homeserver.handlers.sync import SyncHandler, SyncRequest, SyncToken
from homeserver.handlers.sync_filter import SyncFilter
from homeserver.http.errors import MatrixError

JsonDict = dict[str, Any]

MAX_IN_FLIGHT = 2
POLL_TIMEOUT_MS = 30_000
# Sections that describe the device's current state rather than news: a batch with
# nothing but these is not worth a push (they ride along with the next real one).
_STATE_ONLY_KEYS = frozenset({
    "next_batch", "device_one_time_keys_count", "device_unused_fallback_key_types",
    "org.matrix.msc2732.device_unused_fallback_key_types",
})


def _has_items(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_items(v) for v in value.values())
    if isinstance(value, list):
        return bool(value)
    return value is not None


def is_empty_batch(batch: JsonDict) -> bool:
    """True if an incremental batch carries nothing for the client (the long-poll timed out
    or woke for something filtered away): such batches advance the cursor silently."""
    rooms = batch.get("rooms")
    if isinstance(rooms, dict) and any(rooms.values()):
        return False
    return not any(_has_items(v) for k, v in batch.items()
                   if k != "rooms" and k not in _STATE_ONLY_KEYS)


# Hands a batch to the client; False means "stop" (the connection is gone or the
# session is no longer valid).
Sender = Callable[[JsonDict], Awaitable[bool]]


class SyncPushStream:
    """One subscription of one connection."""

    def __init__(
        self,
        sync: SyncHandler,
        user_id: str,
        device_id: str | None,
        since: SyncToken | None,
        sync_filter: SyncFilter,
        full_state: bool,
        send: Sender,
        max_in_flight: int = MAX_IN_FLIGHT,
        poll_timeout_ms: int = POLL_TIMEOUT_MS,
    ) -> None:
        self._sync = sync
        self._user_id = user_id
        self._device_id = device_id
        self._filter = sync_filter
        self._full_state = full_state
        self._send = send
        self._max_in_flight = max_in_flight
        self._poll_timeout_ms = poll_timeout_ms
        # Where the next sync starts (the last batch sent, acknowledged or not).
        self._cursor = since
        # The position the client has confirmed: where a resubscription resumes.
        self.acked: SyncToken | None = since
        self.in_flight: list[str] = []
        self._credit: defer.Deferred[None] | None = None

    def ack(self, next_batch: str) -> bool:
        """Acknowledge a sent batch (and every one before it); False if it was never sent."""
        if next_batch not in self.in_flight:
            try:  # a repeated ack of the current position is harmless
                return self.acked is not None and SyncToken.parse(next_batch) == self.acked
            except MatrixError:
                return False
        index = self.in_flight.index(next_batch)
        del self.in_flight[:index + 1]
        self.acked = SyncToken.parse(next_batch)
        credit, self._credit = self._credit, None
        if credit is not None and not credit.called:
            credit.callback(None)
        return True

    async def run(self) -> None:
        """Push until cancelled or the sender says stop. Cancelling the Deferred wrapping
        this coroutine cancels whatever it waits on (the notifier, a credit, a query);
        the sync path only reads, so abandoning it half way is safe."""
        while True:
            if len(self.in_flight) >= self._max_in_flight:
                self._credit = defer.Deferred()
                await self._credit
                continue
            since = self._cursor
            batch = await self._sync.sync(SyncRequest(
                user_id=self._user_id, device_id=self._device_id, since=since,
                timeout_ms=self._poll_timeout_ms if since is not None else 0,
                full_state=self._full_state, filter=self._filter,
            ))
            next_batch = str(batch["next_batch"])
            if since is not None and not self._full_state and is_empty_batch(batch):
                self._cursor = SyncToken.parse(next_batch)
                continue
            if not await self._send(batch):
                return
            self._full_state = False
            self._cursor = SyncToken.parse(next_batch)
            self.in_flight.append(next_batch)
