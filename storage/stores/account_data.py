"""The ``account_data`` table: per-user (and per-room) JSON blobs, positioned on a stream.

Every write takes a fresh position from the ``account_data`` stream so /sync can ask
"what changed since position X". Content is stored as the JSON text the handler made.
"""

from __future__ import annotations

import json
from typing import Any

from storage.database import Database, Txn

GLOBAL_ROOM = ""  # room_id of account data that belongs to no room

JsonDict = dict[str, Any]


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set_account_data(
        self, user_id: str, room_id: str | None, data_type: str, content_json: str
    ) -> int:
        """Create or replace one entry; returns the stream position of the write."""

        def _set(txn: Txn) -> int:
            stream_id = txn.next_stream_id("account_data")
            txn.execute(
                "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, room_id, data_type)"
                " DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id",
                (user_id, room_id or GLOBAL_ROOM, data_type, content_json, stream_id),
            )
            return stream_id

        return await self._db.run("set_account_data", _set)

    async def get_account_data(
        self, user_id: str, room_id: str | None, data_type: str
    ) -> JsonDict | None:
        row = await self._db.query_one(
            "get_account_data",
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND data_type = ?",
            user_id, room_id or GLOBAL_ROOM, data_type,
        )
        return json.loads(row[0]) if row else None

    async def get_updated_account_data(
        self, user_id: str, since_stream_id: int
    ) -> tuple[JsonDict, dict[str, JsonDict]]:
        """Entries written after ``since_stream_id`` (0: all of them).

        Returns ``({type: content}, {room_id: {type: content}})``.
        """
        rows = await self._db.query(
            "get_updated_account_data",
            "SELECT room_id, data_type, content FROM account_data"
            " WHERE user_id = ? AND stream_id > ? ORDER BY stream_id",
            user_id, since_stream_id,
        )
        global_data: JsonDict = {}
        by_room: dict[str, JsonDict] = {}
        for room_id, data_type, content in rows:
            target = global_data if room_id == GLOBAL_ROOM else by_room.setdefault(room_id, {})
            target[data_type] = json.loads(content)
        return global_data, by_room

    async def max_stream_id(self) -> int:
        row = await self._db.query_one("max_account_data", "SELECT MAX(stream_id) FROM account_data")
        return int(row[0]) if row and row[0] is not None else 0
