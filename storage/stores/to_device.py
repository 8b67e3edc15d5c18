"""The ``device_inbox`` table: to-device messages waiting for their recipient device,
and ``to_device_txns``: /sendToDevice transaction ids already handled.

A message is kept until the device acknowledges it by syncing with a token at or after
the position at which it was delivered (``delivered_at``), so a lost /sync response
never loses a message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

# How long a /sendToDevice transaction id is remembered (a client retries within minutes).
TXN_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class InboxMessage:
    stream_id: int
    sender: str
    message_type: str
    content: dict[str, Any]


class ToDeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def allocate_stream_id(self) -> int:
        return await self._db.run("next_to_device_stream",
                                  lambda txn: txn.next_stream_id("to_device"))

    async def add_messages(
        self, sender: str, sender_device: str, txn_id: str, stream_id: int,
        messages: Sequence[tuple[str, str, str]], message_type: str, now_ms: int,
    ) -> bool:
        """Queue ``(user_id, device_id, json_content)`` rows at ``stream_id`` unless this
        transaction id was already used by this sender device; False if it was."""

        def _do(txn: Txn) -> bool:
            txn.execute("DELETE FROM to_device_txns WHERE sender = ? AND ts < ?",
                        (sender, now_ms - TXN_TTL_MS))
            txn.execute(
                "INSERT INTO to_device_txns (sender, sender_device, txn_id, ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (sender, sender_device, txn_id, now_ms))
            if txn.rowcount == 0:
                return False
            txn.executemany(
                "INSERT INTO device_inbox (user_id, device_id, stream_id, sender, message_type,"
                " content, received_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(u, d, stream_id, sender, message_type, c, now_ms) for u, d, c in messages])
            return True

        return await self._db.run("add_to_device_messages", _do)

    async def take_messages(self, user_id: str, device_id: str, since: int, upto: int,
                            limit: int) -> tuple[list[InboxMessage], bool]:
        """Delete the messages acknowledged by ``since``, then return the oldest ``limit``
        pending ones at or before ``upto`` (marking them delivered at ``upto`` unless
        already delivered earlier), and whether more remain."""

        def _do(txn: Txn) -> tuple[list[InboxMessage], bool]:
            txn.execute(
                "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ?"
                " AND delivered_at IS NOT NULL AND delivered_at <= ?",
                (user_id, device_id, since))
            rows = txn.query(
                "SELECT stream_id, sender, message_type, content FROM device_inbox"
                " WHERE user_id = ? AND device_id = ? AND stream_id <= ?"
                " ORDER BY stream_id LIMIT ?", (user_id, device_id, upto, limit + 1))
            more = len(rows) > limit
            rows = rows[:limit]
            if rows:
                txn.execute(
                    "UPDATE device_inbox SET delivered_at = ? WHERE user_id = ? AND device_id = ?"
                    " AND stream_id <= ? AND delivered_at IS NULL",
                    (upto, user_id, device_id, int(rows[-1][0])))
            return [InboxMessage(int(r[0]), r[1], r[2], json.loads(r[3])) for r in rows], more

        return await self._db.run("take_to_device_messages", _do)

    async def has_messages_after(self, user_id: str, since: int) -> bool:
        """Whether any device of ``user_id`` has a message queued after ``since``."""
        row = await self._db.query_one(
            "to_device_has_messages",
            "SELECT 1 FROM device_inbox WHERE user_id = ? AND stream_id > ? LIMIT 1",
            user_id, since)
        return row is not None

    async def delete_device_inbox(self, user_id: str, device_id: str) -> int:
        return await self._db.execute(
            "delete_device_inbox",
            "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ?", user_id, device_id)
