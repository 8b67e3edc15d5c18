"""The streams a reader advances from other processes' positions: events, account
data, receipts, presence, to-device and device lists (typing lives in the main process's
memory and is served there). A position only ever moves forward."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.event_persister import EventPersister
from homeserver.handlers.stream_positions import StreamPositions
from homeserver.handlers.sync import EXTRA_STREAMS, SyncHandler
from homeserver.http.params import MAX_POSITION

# Streams replicated by position (typing has no persisted position).
REPLICATED = ("events", "account_data", "receipts", "presence", "to_device", "device_lists")


class StreamSet:
    def __init__(self, sync: SyncHandler, persister: EventPersister,
                 multi_events: bool = False) -> None:
        self._sync = sync
        self._persister = persister
        # With several events writers the events stream is replicated per writer
        # (homeserver/replication/multi_writer.py), not as one of the main process's.
        self._multi_events = multi_events
        # The database-backed ephemeral streams' positions, by stream name. The handlers
        # keep them private; reading them here (once, at start-up) fails loudly if a
        # handler changes shape, rather than silently never advancing.
        self._positions: dict[str, StreamPositions] = {"events": persister.positions}
        for src in sync.sources:
            positions = getattr(src, "_positions", None)
            if src.name in REPLICATED:
                if not isinstance(positions, StreamPositions):
                    raise TypeError(f"replication: stream {src.name!r} has no positions")
                self._positions[src.name] = positions

    def snapshot(self) -> dict[str, int]:
        """This process's readable position of every replicated stream."""
        token = self._sync.now_token()
        out = {"events": token.events, "account_data": token.account_data}
        out.update({n: p for n, p in zip(EXTRA_STREAMS, token.extra, strict=True)
                    if n in REPLICATED and n in self._positions})
        if self._multi_events:
            del out["events"]
        return out

    def advance(self, positions: dict[str, Any]) -> bool:
        """Move each stream forward to the given position; True if any moved."""
        before = self.snapshot()
        for name, value in positions.items():
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not 0 <= value <= MAX_POSITION:
                continue
            if name == "account_data":
                if value > before["account_data"]:
                    # The public way in (it notifies; the user "" waits for nothing).
                    self._sync.note_account_data(value, "")
            elif name == "events" and self._multi_events:
                continue
            elif name in self._positions:
                self._positions[name].start_at(value)
        return self.snapshot() != before
