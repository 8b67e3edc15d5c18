"""Finding room events by ``origin_server_ts`` (``/timestamp_to_event``).

Kept apart from :mod:`storage.stores.events` because only one endpoint needs it. The
scan is bounded to a stream-ordering window (the span of history the requester may
see) and pages with a keyset on (timestamp, stream ordering), so ties are stable.
"""

from __future__ import annotations

from typing import Any

from homeserver.crypto.content import PLAIN_CODEC, FieldCodec
from homeserver.events.model import Event
from storage.database import Database
from storage.stores.event_rows import EVENT_COLS, EVENT_FROM, rows_to_events


class EventTimestampStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.codec: FieldCodec = PLAIN_CODEC  # as EventStore.codec, set at wiring

    async def events_by_timestamp(
        self, room_id: str, ts: int, direction: str, low: int, high: int | None,
        after: tuple[int, int] | None, limit: int,
    ) -> list[Event]:
        """Events with ``origin_server_ts`` >= ``ts`` oldest first (``f``) or <= ``ts``
        newest first (``b``), with stream ordering in [low, high], continuing past the
        (timestamp, stream ordering) key ``after``. Outliers and rejected events never
        count: they are not part of the room's visible timeline."""
        if direction == "f":
            cmp, order, key_cmp = ">=", "ASC", ">"
        else:
            cmp, order, key_cmp = "<=", "DESC", "<"
        sql = [f"SELECT {EVENT_COLS} FROM {EVENT_FROM} WHERE e.room_id = ?",
               f"AND e.origin_server_ts {cmp} ?", "AND e.outlier = ?",
               "AND e.rejected_reason IS NULL", "AND e.stream_ordering >= ?"]
        args: list[Any] = [room_id, ts, False, low]
        if high is not None:
            sql.append("AND e.stream_ordering <= ?")
            args.append(high)
        if after is not None:
            sql.append(f"AND (e.origin_server_ts {key_cmp} ?"
                       f" OR (e.origin_server_ts = ? AND e.stream_ordering {key_cmp} ?))")
            args += [after[0], after[0], after[1]]
        sql.append(f"ORDER BY e.origin_server_ts {order}, e.stream_ordering {order} LIMIT ?")
        args.append(limit)
        rows = await self._db.query("events_by_timestamp", " ".join(sql), *args)
        return await rows_to_events(rows, self.codec)
