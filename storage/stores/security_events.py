"""The ``security_events`` table: an append-only record of auth and session events.

No password, token or message content is ever written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database


@dataclass(frozen=True)
class SecurityEvent:
    ts: int
    event_type: str
    outcome: str
    user_id: str | None = None
    device_id: str | None = None
    session_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None


_COLS = "ts, event_type, outcome, user_id, device_id, session_id, ip, user_agent, reason, details"


class SecurityEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, ev: SecurityEvent) -> None:
        await self._db.execute(
            "append_security_event",
            f"INSERT INTO security_events ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ev.ts, ev.event_type, ev.outcome, ev.user_id, ev.device_id, ev.session_id,
            ev.ip, ev.user_agent, ev.reason,
            json.dumps(ev.details, sort_keys=True) if ev.details else None,
        )

    async def list_events(
        self, user_id: str | None = None, event_type: str | None = None, limit: int = 100
    ) -> list[SecurityEvent]:
        where, args = [], []
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if event_type is not None:
            where.append("event_type = ?")
            args.append(event_type)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.query(
            "list_security_events",
            f"SELECT {_COLS} FROM security_events {clause} ORDER BY id DESC LIMIT ?",
            *args, limit,
        )
        return [
            SecurityEvent(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                          json.loads(r[9]) if r[9] else None)
            for r in rows
        ]
