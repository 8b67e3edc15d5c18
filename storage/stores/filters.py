"""The ``user_filters`` table: immutable sync filters, numbered per user from 0."""

from __future__ import annotations

import json
from typing import Any

from storage.database import Database, Txn

# How often to retry when a concurrent upload took the filter id we picked (each
# failure means another filter was stored, so this bounds concurrent uploads, not time).
_MAX_ATTEMPTS = 10


class FilterStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_filter(self, user_id: str, filter_json: str) -> int:
        """Store a filter (canonical JSON text) and return its id.

        An identical filter already stored for the user is reused, so clients that
        upload the same filter at every start do not grow the table.
        """

        def _add(txn: Txn) -> int:
            row = txn.query_one(
                "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_json = ?"
                " ORDER BY filter_id LIMIT 1",
                (user_id, filter_json),
            )
            if row is not None:
                return int(row[0])
            row = txn.query_one(
                "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM user_filters WHERE user_id = ?",
                (user_id,),
            )
            filter_id = int(row[0]) if row else 0
            txn.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, filter_json),
            )
            return filter_id

        for attempt in range(_MAX_ATTEMPTS):
            try:
                return await self._db.run("add_user_filter", _add)
            except Exception as e:
                # Two uploads raced for the same id: the loser retries with a fresh MAX.
                if not self._db.is_integrity_error(e) or attempt == _MAX_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        row = await self._db.query_one(
            "get_user_filter",
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
            user_id, filter_id,
        )
        return json.loads(row[0]) if row else None
