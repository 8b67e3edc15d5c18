"""The ``ui_auth_sessions`` tables: User-Interactive Authentication progress."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn


@dataclass(frozen=True)
class UiAuthSession:
    session_id: str
    created_ts: int
    uri: str
    method: str
    user_id: str | None
    serverdict: dict[str, Any]
    results: dict[str, Any]


class UiAuthStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, session_id: str, now_ms: int, uri: str, method: str, user_id: str | None
    ) -> None:
        await self._db.execute(
            "create_ui_auth_session",
            "INSERT INTO ui_auth_sessions (session_id, created_ts, uri, method, user_id, serverdict)"
            " VALUES (?, ?, ?, ?, ?, '{}')",
            session_id, now_ms, uri, method, user_id,
        )

    async def get(self, session_id: str) -> UiAuthSession | None:
        def _get(txn: Txn) -> UiAuthSession | None:
            row = txn.query_one(
                "SELECT session_id, created_ts, uri, method, user_id, serverdict"
                " FROM ui_auth_sessions WHERE session_id = ?",
                (session_id,),
            )
            if row is None:
                return None
            results = {
                r[0]: json.loads(r[1])
                for r in txn.query(
                    "SELECT stage_type, result FROM ui_auth_stage_results WHERE session_id = ?",
                    (session_id,),
                )
            }
            return UiAuthSession(row[0], int(row[1]), row[2], row[3], row[4],
                                 json.loads(row[5]), results)

        return await self._db.run("get_ui_auth_session", _get)

    async def set_server_value(self, session_id: str, key: str, value: Any) -> None:
        def _set(txn: Txn) -> None:
            row = txn.query_one("SELECT serverdict FROM ui_auth_sessions WHERE session_id = ?",
                                (session_id,))
            if row is None:
                return
            data = json.loads(row[0])
            data[key] = value
            txn.execute("UPDATE ui_auth_sessions SET serverdict = ? WHERE session_id = ?",
                        (json.dumps(data), session_id))

        await self._db.run("set_ui_auth_server_value", _set)

    async def mark_stage_complete(self, session_id: str, stage: str, result: Any) -> None:
        def _mark(txn: Txn) -> None:
            txn.execute(
                "DELETE FROM ui_auth_stage_results WHERE session_id = ? AND stage_type = ?",
                (session_id, stage),
            )
            txn.execute(
                "INSERT INTO ui_auth_stage_results (session_id, stage_type, result)"
                " VALUES (?, ?, ?)",
                (session_id, stage, json.dumps(result)),
            )

        await self._db.run("mark_ui_auth_stage", _mark)

    async def delete(self, session_id: str) -> None:
        def _delete(txn: Txn) -> None:
            txn.execute("DELETE FROM ui_auth_stage_results WHERE session_id = ?", (session_id,))
            txn.execute("DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,))

        await self._db.run("delete_ui_auth_session", _delete)

    async def expired_sessions(self, older_than_ms: int) -> list[UiAuthSession]:
        rows = await self._db.query(
            "expired_ui_auth_sessions",
            "SELECT session_id FROM ui_auth_sessions WHERE created_ts < ?",
            older_than_ms,
        )
        out = []
        for (sid,) in rows:
            s = await self.get(sid)
            if s is not None:
                out.append(s)
        return out
