"""Reads for simplified sliding sync (MSC4186): room recency and per-type current state
across many rooms at once, so a room list of hundreds of rooms costs a few queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from storage.database import Database, Txn

_CHUNK = 200


class SlidingSyncStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def latest_of_types(self, rooms: Sequence[tuple[str, int]], types: Sequence[str],
                              upto: int) -> dict[str, int]:
        """Per ``(room_id, after)``: the stream position of the newest event of one of
        ``types`` in (after, upto]; rooms with none are absent. One short index walk per
        room (``events_room_stream``), all in one transaction."""
        marks = ",".join("?" for _ in types)
        sql = ("SELECT stream_ordering FROM events WHERE room_id = ? AND stream_ordering > ?"
               f" AND stream_ordering <= ? AND type IN ({marks}) AND outlier = ?"
               " ORDER BY stream_ordering DESC LIMIT 1")

        def _read(txn: Txn) -> dict[str, int]:
            out: dict[str, int] = {}
            for room_id, after in rooms:
                if after >= upto:
                    continue
                row = txn.query_one(sql, (room_id, after, upto, *types, False))
                if row is not None:
                    out[room_id] = int(row[0])
            return out

        if not rooms:
            return {}
        return await self._db.run("sliding_sync_latest_of_types", _read)

    async def current_state_of_type(self, room_ids: Iterable[str], event_type: str
                                    ) -> dict[str, dict[str, str]]:
        """``{room_id: {state_key: event_id}}`` of the current ``event_type`` state."""
        ids = list(room_ids)
        out: dict[str, dict[str, str]] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "sliding_sync_current_state_of_type",
                f"SELECT room_id, state_key, event_id FROM current_state"
                f" WHERE room_id IN ({marks}) AND type = ?",
                *chunk, event_type,
            )
            for room_id, state_key, event_id in rows:
                out.setdefault(room_id, {})[state_key] = event_id
        return out
