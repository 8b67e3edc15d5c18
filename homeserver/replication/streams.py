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
        # The database-backed ephemeral streams' positions, by stream name (each source's
        # public ``positions``). Checked once, at start-up: a replicated stream without
        # them fails loudly rather than silently never advancing.
        self._positions: dict[str, StreamPositions] = {"events": persister.positions}
        for src in sync.sources:
            if src.name not in REPLICATED:
                continue
            positions = getattr(src, "positions", None)
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

    @staticmethod
    def _valid(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) \
            and 0 <= value <= MAX_POSITION

    def advance(self, positions: dict[str, Any]) -> bool:
        """Move each stream forward to the given position; True if any moved."""
        before = self.snapshot()
        for name, value in positions.items():
            if not self._valid(value):
                continue
            if name == "account_data":
                if value > before["account_data"]:
                    # The public way in (it notifies; the user "" waits for nothing).
                    self._sync.note_account_data(value, "")
            elif name == "events" and self._multi_events:
                continue
            elif name in self._positions:
                self._positions[name].advance_to(value)
        return self.snapshot() != before

    def reset(self, positions: dict[str, Any]) -> None:
        """A reader starting: begin each stream at the writer's recorded position, even
        below what this process loaded from the database's maxima (see
        ``StreamPositions.reset_to``). Before this process serves anything. Account data
        has no lowering API in the sync handler: it is advanced only."""
        for name, value in positions.items():
            if not self._valid(value) or (name == "events" and self._multi_events):
                continue
            if name in self._positions:
                self._positions[name].reset_to(value)
        self.advance({k: v for k, v in positions.items() if k == "account_data"})
